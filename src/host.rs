//! What a node needs from its host, checked at start before weft takes a lease: what
//! flanneld checks (`br_netfilter` in iptables mode) and the TUN device weft's userspace
//! dataplane opens. Each check returns the problem with its fix, or `None`; paths are
//! parameters, so the checks run against any directory in tests.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The TUN clone device's numbers (`mknod /dev/net/tun c 10 200`).
pub const TUN_DEVICE: (u64, u64) = (10, 200);

/// Linux's major and minor numbers of a device number (glibc's `gnu_dev_major`/`minor`).
pub fn dev_numbers(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000);
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00);
    (major, minor)
}

/// What is wrong with the TUN clone device at `path`, if anything: missing, not the TUN
/// device, or not openable (no TUN driver, no access).
pub fn tun_device_problem(path: &Path) -> Option<String> {
    let tun = path.display();
    let (major, minor) = TUN_DEVICE;
    let make = format!(
        "mkdir -p {} && mknod {tun} c {major} {minor} (in a container: mount the host's {tun})",
        path.parent().unwrap_or(Path::new("/")).display()
    );
    let Ok(meta) = fs::metadata(path) else {
        return Some(format!("{tun} is missing: {make}"));
    };
    let is = dev_numbers(meta.rdev());
    if !meta.file_type().is_char_device() || is != TUN_DEVICE {
        return Some(format!(
            "{tun} is not the TUN device (it is {}, not char {major}:{minor}): rm {tun} && {make}",
            describe(&meta)
        ));
    }
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => None,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Some(format!(
            "{tun} does not open ({e}): the kernel has no TUN driver loaded: modprobe tun"
        )),
        Err(e) => Some(format!(
            "{tun} does not open ({e}): weft needs read and write access to it (root, or CAP_NET_ADMIN with the device's permissions)"
        )),
    }
}

fn describe(meta: &fs::Metadata) -> String {
    let t = meta.file_type();
    if t.is_char_device() {
        let (major, minor) = dev_numbers(meta.rdev());
        format!("char {major}:{minor}")
    } else if t.is_block_device() {
        "a block device".into()
    } else if t.is_dir() {
        "a directory".into()
    } else {
        "a regular file".into()
    }
}

/// flanneld's start-up check in iptables mode: the bridge netfilter sysctls under
/// `bridge_sysctls` (`/proc/sys/net/bridge`) exist, i.e. `br_netfilter` is loaded, so that
/// pod traffic crossing cni0 passes iptables (kube-proxy's Service rules among them).
pub fn br_netfilter_problem(bridge_sysctls: &Path, ipv4: bool, ipv6: bool) -> Option<String> {
    let wanted = [
        (ipv4, "bridge-nf-call-iptables"),
        (ipv6, "bridge-nf-call-ip6tables"),
    ];
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(on, name)| *on && !bridge_sysctls.join(name).exists())
        .map(|(_, name)| bridge_sysctls.join(name).display().to_string())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "br_netfilter is not loaded ({} missing): pod traffic crossing the bridge would bypass iptables, kube-proxy's Service rules among them, as flanneld refuses to start for; run `modprobe br_netfilter` (and list it in /etc/modules-load.d/), or start with --br-netfilter-check=false to carry on without it",
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_decode_as_glibc_does() {
        assert_eq!(dev_numbers((10 << 8) | 200), (10, 200));
        assert_eq!(dev_numbers((1 << 8) | 3), (1, 3));
        let (major, minor) = (4100u64, 300u64);
        let rdev = (minor & 0xff)
            | ((major & 0xfff) << 8)
            | ((minor & !0xff) << 12)
            | ((major & !0xfff) << 32);
        assert_eq!(dev_numbers(rdev), (major, minor));
    }

    #[test]
    fn a_tun_path_is_checked_for_what_it_is() {
        let dir = std::env::temp_dir().join(format!("weft-host-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let missing = tun_device_problem(&dir.join("tun")).unwrap();
        assert!(missing.contains("is missing: mkdir -p"), "{missing}");
        assert!(missing.contains(" c 10 200"), "{missing}");
        fs::write(dir.join("tun"), b"").unwrap();
        let file = tun_device_problem(&dir.join("tun")).unwrap();
        assert!(
            file.contains("is not the TUN device (it is a regular file"),
            "{file}"
        );
        let null = tun_device_problem(Path::new("/dev/null")).unwrap();
        assert!(null.contains("(it is char 1:3, not char 10:200)"), "{null}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn br_netfilter_is_checked_per_family() {
        let dir = std::env::temp_dir().join(format!("weft-brnf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = br_netfilter_problem(&dir, true, false).unwrap();
        assert!(p.contains("bridge-nf-call-iptables missing"), "{p}");
        assert!(p.contains("modprobe br_netfilter"), "{p}");
        assert!(p.contains("--br-netfilter-check=false"), "{p}");
        fs::write(dir.join("bridge-nf-call-iptables"), b"1\n").unwrap();
        assert_eq!(br_netfilter_problem(&dir, true, false), None);
        let v6 = br_netfilter_problem(&dir, true, true).unwrap();
        assert!(
            v6.contains("ip6tables missing") && !v6.contains("iptables missing"),
            "{v6}"
        );
        assert_eq!(br_netfilter_problem(&dir, false, false), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
