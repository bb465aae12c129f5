//! Building requests: message headers, attributes and nested attributes, appended to one
//! buffer so a whole window of requests goes out in one datagram.

use super::consts::{NLA_F_NESTED, NLA_HDRLEN};

/// Messages being built, back to back.
#[derive(Default)]
pub(crate) struct MsgBuf {
    buf: Vec<u8>,
}

impl MsgBuf {
    pub(crate) fn new() -> MsgBuf {
        MsgBuf::default()
    }
    pub(crate) fn with_capacity(n: usize) -> MsgBuf {
        MsgBuf {
            buf: Vec::with_capacity(n),
        }
    }
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }
    /// Drop what was appended since `len` (a request that turned out not to be encodable).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    /// Start a message; returns its offset for [`MsgBuf::end`].
    pub(crate) fn begin(&mut self, ty: u16, flags: u16, seq: u32) -> usize {
        self.align();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        start
    }
    /// Finish the message begun at `start`: pad it and fill in its length.
    pub(crate) fn end(&mut self, start: usize) {
        self.align();
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
    /// Bytes as they are: a family's fixed header (ifinfomsg, tcmsg, nfgenmsg, ...).
    pub(crate) fn bytes(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
    pub(crate) fn attr(&mut self, ty: u16, data: &[u8]) {
        self.align();
        let len = (NLA_HDRLEN + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
    }
    pub(crate) fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }
    /// NUL-terminated string.
    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) {
        self.align();
        let len = (NLA_HDRLEN + s.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.align();
    }
    /// Start a nested attribute, flagged NLA_F_NESTED; returns its offset for
    /// [`MsgBuf::nest_end`].
    pub(crate) fn nest_begin(&mut self, ty: u16) -> usize {
        self.nest_begin_as_is(ty | NLA_F_NESTED)
    }
    /// Start a nested attribute with `ty` sent as given: tc's TCA_OPTIONS go without
    /// NLA_F_NESTED, as iproute2 sends them (some qdiscs' options are plain structs).
    pub(crate) fn nest_begin_as_is(&mut self, ty: u16) -> usize {
        self.align();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        start
    }
    pub(crate) fn nest_end(&mut self, start: usize) {
        self.align();
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}
