/// mimalloc: faster than glibc malloc for the services' many small, short-lived allocations
/// across threads, and it returns freed memory to the system (`--no-default-features` builds
/// with the system allocator, for comparison).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    call_api::main()
}
