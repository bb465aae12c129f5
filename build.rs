//! Makes the man pages (`kvmnet.1`, `kvmnet-COMMAND.1`) and the bash, zsh and fish completions
//! from the command line's one definition, src/cli_args.rs, into OUT_DIR; the binary carries
//! them (`kvmnet man DIR`, `kvmnet completions SHELL`).

use std::fmt::Write as _;
use std::path::Path;

include!("src/cli_args.rs");

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli_args.rs");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cmd = <Cli as clap::CommandFactory>::command();

    let man = out.join("man");
    let _ = std::fs::remove_dir_all(&man);
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let mut pages: Vec<String> = std::fs::read_dir(&man)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    pages.sort();

    let mut generated = String::from(
        "/// The man pages: (file name, roff).\npub const MAN_PAGES: &[(&str, &str)] = &[\n",
    );
    for p in &pages {
        writeln!(generated, "    ({p:?}, include_str!({:?})),", man.join(p)).expect("to a String");
    }
    generated.push_str("];\n\n/// The completion scripts: (shell, script).\npub const COMPLETIONS: &[(&str, &str)] = &[\n");
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let path = clap_complete::generate_to(shell, &mut cmd.clone(), "kvmnet", &out)?;
        writeln!(generated, "    (\"{shell}\", include_str!({path:?})),").expect("to a String");
    }
    generated.push_str("];\n");
    write_if_changed(&out.join("generated_docs.rs"), &generated)
}

fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    std::fs::write(path, text)
}
