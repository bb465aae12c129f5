// The daemon rebuilds large short-lived states (a 1,000-port spec, snapshot and plan) on every
// request from several threads; with glibc's allocator a third of that time went to malloc
// and free (measured with perf on the policy benchmark's daemon). Without transparent huge
// pages: with them, starting any kvmnet command cost 1.5 ms more (0.4 ms without).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kvmnet::cli::main()
}
