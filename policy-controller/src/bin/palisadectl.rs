//! `palisadectl`: see [`palisade_policy::ctl`].

fn main() -> std::process::ExitCode {
    palisade_policy::ctl::main()
}
