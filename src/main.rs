// The daemon rebuilds large short-lived states (a 1,000-port spec, snapshot and plan) on every
// request from several threads; with glibc's allocator a third of that time went to malloc
// and free (measured with perf on the policy benchmark's daemon).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kvmnet::cli::main()
}
