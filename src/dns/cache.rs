//! Forwarded answers kept for their TTL: positive answers for the smallest TTL of their
//! records, negative ones (NXDOMAIN, NODATA) for their SOA's negative TTL (RFC 2308 5:
//! the lesser of the SOA record's TTL and its MINIMUM field); answers without a TTL to go
//! by (a negative answer without SOA, SERVFAIL, REFUSED) are not kept. Time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// A question, with the upstream set it was asked of (networks with other forwarders do
/// not share answers).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub name: Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    pub upstream: u64,
}

struct Entry {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    stored: Instant,
    expires: Instant,
}

/// A cached answer with TTLs counted down to what is left.
pub struct Hit {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

pub struct Cache {
    map: HashMap<Key, Entry>,
    pub max_entries: usize,
    pub max_ttl: u32,
    pub max_negative_ttl: u32,
}

impl Cache {
    pub fn new(max_entries: usize, max_ttl: u32, max_negative_ttl: u32) -> Cache {
        Cache {
            map: HashMap::new(),
            max_entries,
            max_ttl,
            max_negative_ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Hit> {
        let e = self.map.get(key)?;
        if now >= e.expires {
            self.map.remove(key);
            return None;
        }
        let gone = now.saturating_duration_since(e.stored).as_secs();
        let age = |r: &Record| {
            let mut r = r.clone();
            r.ttl = r
                .ttl
                .saturating_sub(u32::try_from(gone).unwrap_or(u32::MAX));
            r
        };
        Some(Hit {
            rcode: e.rcode,
            answers: e.answers.iter().map(age).collect(),
            authorities: e.authorities.iter().map(age).collect(),
        })
    }

    /// How long `m` may be kept, if at all.
    fn ttl_of(&self, m: &Message) -> Option<u32> {
        let rcode = m.metadata.response_code;
        let negative = rcode == ResponseCode::NXDomain
            || (rcode == ResponseCode::NoError && m.answers.is_empty());
        if negative {
            let soa = m.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(s) => Some(r.ttl.min(s.minimum)),
                _ => None,
            })?;
            return Some(soa.min(self.max_negative_ttl));
        }
        if rcode != ResponseCode::NoError || m.metadata.truncation {
            return None;
        }
        let ttl = m
            .answers
            .iter()
            .chain(&m.authorities)
            .map(|r| r.ttl)
            .min()?;
        Some(ttl.min(self.max_ttl))
    }

    /// Keeps an upstream's answer to `key`. Returns whether it was kept.
    pub fn put(&mut self, key: Key, m: &Message, now: Instant) -> bool {
        let Some(ttl) = self.ttl_of(m).filter(|t| *t > 0) else {
            return false;
        };
        if self.map.len() >= self.max_entries && !self.map.contains_key(&key) {
            self.map.retain(|_, e| e.expires > now);
            // Still full: make room for a tenth, whichever they are.
            if self.map.len() >= self.max_entries {
                let drop: Vec<Key> = self
                    .map
                    .keys()
                    .take(self.max_entries / 10 + 1)
                    .cloned()
                    .collect();
                for k in drop {
                    self.map.remove(&k);
                }
            }
        }
        let clip = |rs: &[Record]| -> Vec<Record> {
            rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.min(ttl);
                    r
                })
                .collect()
        };
        self.map.insert(
            key,
            Entry {
                rcode: m.metadata.response_code,
                answers: clip(&m.answers),
                authorities: clip(&m.authorities),
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
            },
        );
        true
    }

    /// Drops what has expired.
    pub fn prune(&mut self, now: Instant) {
        self.map.retain(|_, e| e.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};

    fn key(n: &str) -> Key {
        Key {
            name: Name::from_ascii(n).unwrap(),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            upstream: 0,
        }
    }

    fn answer(ttl: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_answer(Record::from_rdata(
            Name::from_ascii("a.test.").unwrap(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m
    }

    fn nxdomain(soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        let apex = Name::from_ascii("test.").unwrap();
        let soa = SOA::new(apex.clone(), apex.clone(), 1, 1, 1, 1, minimum);
        m.add_authority(Record::from_rdata(apex, soa_ttl, RData::SOA(soa)));
        m
    }

    #[test]
    fn ttls_count_down_and_expire() {
        let (mut c, t) = (Cache::new(100, 86400, 3600), Instant::now());
        assert!(c.put(key("a.test."), &answer(10), t));
        let h = c.get(&key("A.TEST."), t + Duration::from_secs(4)).unwrap();
        assert_eq!(h.answers[0].ttl, 6);
        assert!(
            c.get(&key("a.test."), t + Duration::from_secs(10))
                .is_none()
        );
        assert!(!c.put(key("z.test."), &answer(0), t), "TTL 0 is not kept");
    }

    #[test]
    fn negative_answers_use_the_soa_minimum() {
        let (mut c, t) = (Cache::new(100, 86400, 3600), Instant::now());
        assert!(c.put(key("n.test."), &nxdomain(300, 5), t));
        let h = c.get(&key("n.test."), t + Duration::from_secs(4)).unwrap();
        assert_eq!(h.rcode, ResponseCode::NXDomain);
        assert!(c.get(&key("n.test."), t + Duration::from_secs(5)).is_none());
        let mut bare = nxdomain(300, 5);
        bare.authorities.clear();
        assert!(
            !c.put(key("m.test."), &bare, t),
            "no SOA, no negative caching"
        );
        let mut fail = answer(60);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert!(!c.put(key("f.test."), &fail, t));
    }

    #[test]
    fn a_full_cache_makes_room() {
        let (mut c, t) = (Cache::new(20, 86400, 3600), Instant::now());
        for i in 0..100 {
            c.put(key(&format!("h{i}.test.")), &answer(60), t);
        }
        assert!(c.len() <= 20);
    }
}
