//! `weft-cni`: flannel's CNI plugin, to be installed as `/opt/cni/bin/flannel` (see
//! `weft::cni`). The runtime gives the command in `CNI_*` variables and the network config
//! on stdin; the result, or a CNI error object, goes to stdout.

use std::collections::HashMap;
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    if env.get("CNI_COMMAND").map(String::as_str) != Some("VERSION") {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    match weft::cni::plugin::handle(&env, &stdin) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err((e, version)) => {
            println!("{}", e.to_json(&version));
            eprintln!("weft-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
