//! `rusectl`: the Ruse admin CLI. Everything is in the library.

fn main() -> std::process::ExitCode {
    rusectl::main()
}
