//! `palisade`: the Palisade CNI plugin. Everything is in the library (`src/lib.rs`); the
//! process edge (env + stdin → command → JSON) is `cli::run`.

fn main() {
    std::process::exit(palisade_cni::cli::run());
}
