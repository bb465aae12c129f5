// The daemon rebuilds large short-lived states (a 1,000-port spec, snapshot and plan) on every
// request from several threads; with glibc's allocator a third of that time went to malloc
// and free (measured with perf on the policy benchmark's daemon). Without transparent huge
// pages: with them, starting any kvmnet command cost 1.5 ms more (0.4 ms without).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // A command whose output goes to a reader that stops early (`kvmnet status | head`) ends
    // quietly, as other command-line tools do, instead of panicking on the broken pipe. Not
    // the daemon: a client that hangs up must cost it one connection, not the process.
    if std::env::args().nth(1).as_deref() != Some("daemon") {
        // SAFETY: setting a signal's disposition to the default at start, before any thread.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    kvmnet::cli::main()
}
