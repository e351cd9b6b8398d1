//! flannel's own net-conf cases, run against weft's reader: inputs and expected results
//! from flannel's `pkg/subnet/config_test.go` (flannel v0.28.9, commit cdf76059; the line
//! of each case is named) and from how flanneld's `ParseConfig` reads a config with Go's
//! `encoding/json` (keys matched case-insensitively, the last of repeated keys, `null` per
//! field type, `net.ParseCIDR`'s addresses) and its vxlan backend's `VXLANConfig`, whose json
//! tags are lower-case (`pkg/backend/vxlan/vxlan.go:159`).

use weft::config::{BackendConfig, Ipv4Config, Ipv6Config, NetConfig};

fn ok(json: &str) -> NetConfig {
    NetConfig::parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// The IPv4 side of an accepted config.
fn ok4(json: &str) -> Ipv4Config {
    ok(json).ipv4.expect("an IPv4 side")
}

fn refused(json: &str, why: &str) {
    let e = NetConfig::parse(json).expect_err(json).to_string();
    assert!(e.contains(why), "{json}: {e:?} lacks {why:?}");
}

/// config_test.go:21 TestConfigDefaults: `{ "network": "10.3.0.0/16" }`, a lower-case key.
#[test]
fn config_defaults() {
    let c = ok4(r#"{ "network": "10.3.0.0/16" }"#);
    assert_eq!(c.network.to_string(), "10.3.0.0/16");
    assert_eq!(c.subnet_min.to_string(), "10.3.1.0");
    assert_eq!(c.subnet_max.to_string(), "10.3.255.0");
    assert_eq!(c.subnet_len, 24);
}

/// config_test.go:81 TestConfigOverrides.
#[test]
fn config_overrides() {
    let c = ok4(
        r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.5.0", "SubnetMax": "10.3.8.0", "SubnetLen": 28 }"#,
    );
    assert_eq!(c.network.to_string(), "10.3.0.0/16");
    assert_eq!(c.subnet_min.to_string(), "10.3.5.0");
    assert_eq!(c.subnet_max.to_string(), "10.3.8.0");
    assert_eq!(c.subnet_len, 28);
}

/// The vxlan backend's keys as `VXLANConfig` declares them (lower-case), and in any other
/// case: the same VNI, port, MTU and DirectRouting as flanneld, never the defaults.
#[test]
fn lower_case_vxlan_keys_mean_what_they_mean_to_flanneld() {
    for backend in [
        r#"{"Type":"vxlan","vni":2,"port":4789,"mtu":1400,"directRouting":true}"#,
        r#"{"type":"VXLAN","VNI":2,"Port":4789,"MTU":1400,"DirectRouting":true}"#,
        r#"{"TYPE":"Vxlan","Vni":2,"PORT":4789,"Mtu":1400,"directrouting":true}"#,
    ] {
        let c = ok(&format!(
            r#"{{"Network":"10.244.0.0/16","backend":{backend}}}"#
        ));
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan {
                vni: 2,
                port: 4789,
                mtu: Some(1400),
                direct_routing: true
            },
            "{backend}"
        );
    }
    let u = ok(r#"{"Network":"10.244.0.0/16","Backend":{"type":"udp","port":9000}}"#);
    assert_eq!(u.backend, BackendConfig::Udp { port: 9000 });
    let h = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"HOST-GW"}}"#);
    assert_eq!(h.backend, BackendConfig::HostGw);
}

/// Lower-case keys that flanneld honours and weft refuses by design stay refused.
#[test]
fn refusals_by_design_are_not_bypassed_by_case() {
    refused(
        r#"{"Network":"10.244.0.0/16","backend":{"type":"vxlan","gbp":true}}"#,
        "GBP",
    );
    refused(
        r#"{"Network":"10.244.0.0/16","backend":{"type":"vxlan","learning":true}}"#,
        "Learning",
    );
    refused(
        r#"{"network":"10.244.0.0/16","enableIPv6":true,"ipv6Network":"fc00::/48","backend":{"type":"udp"}}"#,
        "udp backend carries IPv4 only",
    );
    refused(
        r#"{"network":"10.244.0.0/16","subnetLen":31}"#,
        "SubnetLen 31",
    );
    let n = ok(r#"{"network":"10.244.0.0/16","enableNFTables":true,"Backend":{"Type":"vxlan"}}"#);
    assert!(n.enable_nftables);
}

/// Go's `null`: an error for flannel's address types (their UnmarshalJSON parses "null"),
/// the default for plain fields, and a backend without a type for `"Backend": null`.
#[test]
fn null_is_read_per_field_type() {
    refused(
        r#"{"Network":"10.244.0.0/16","SubnetMin":null}"#,
        "SubnetMin",
    );
    refused(r#"{"Network":null}"#, "Network");
    refused(
        r#"{"Network":"10.244.0.0/16","Backend":null}"#,
        "Backend is null",
    );
    let c = ok(
        r#"{"Network":"10.244.0.0/16","SubnetLen":null,"EnableNFTables":null,"Backend":{"Type":"vxlan","VNI":null}}"#,
    );
    assert_eq!(c.ipv4.as_ref().unwrap().subnet_len, 24);
    assert!(matches!(c.backend, BackendConfig::Vxlan { vni: 1, .. }));
}

/// Addresses as `net.ParseCIDR`/`ParseIP` read them: no leading zeros.
#[test]
fn addresses_parse_as_gos() {
    refused(r#"{"Network":"10.03.0.0/16"}"#, "not an IPv4 CIDR");
    refused(r#"{"Network":"10.3.0.0/+16"}"#, "not an IPv4 CIDR");
    refused(
        r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.05.0"}"#,
        "SubnetMin",
    );
    // Integers only where Go has an integer field.
    refused(r#"{"Network":"10.3.0.0/16","SubnetLen":24.0}"#, "SubnetLen");
    refused(r#"{"Network":"10.3.0.0/16","SubnetLen":-1}"#, "SubnetLen");
}

/// flanneld's checks that weft had skipped: IPv6 fields parsed whatever EnableIPv6 says,
/// and no address family at all.
#[test]
fn flanneld_checks_weft_had_skipped() {
    refused(
        r#"{"Network":"10.3.0.0/16","IPv6Network":"garbage"}"#,
        "IPv6Network",
    );
    ok(r#"{"Network":"10.3.0.0/16","IPv6Network":"fc00::/48"}"#);
    refused(
        r#"{"Network":"10.3.0.0/16","EnableIPv4":false}"#,
        "none defined stack",
    );
    refused(
        r#"{"Network":"10.3.0.0/16","IPv6SubnetMin":"nope"}"#,
        "IPv6SubnetMin",
    );
    refused(
        r#"{"Network":"10.3.0.0/16","IPv6SubnetLen":-2}"#,
        "IPv6SubnetLen",
    );
    ok(r#"{"Network":"10.3.0.0/16","IPv6SubnetMin":null,"IPv6SubnetMax":"fc00:0:0:f::"}"#);
    // CheckNetworkConfig: 0.0.0.0/0 is an empty Network.
    refused(r#"{"Network":"0.0.0.0/0"}"#, "whole address space");
}

/// A repeated key, in one spelling or several: the last one, as Go keeps it.
#[test]
fn the_last_of_repeated_keys_wins() {
    let c =
        ok4(r#"{"Network":"10.1.0.0/16","network":"10.3.0.0/16","SubnetLen":25,"SubnetLen":26}"#);
    assert_eq!(c.network.to_string(), "10.3.0.0/16");
    assert_eq!(c.subnet_len, 26);
}

/// A key no field takes is ignored, as flanneld ignores it, and named in a warning.
#[test]
fn unknown_keys_are_named() {
    let c = ok(r#"{"Network":"10.3.0.0/16","SubnetLne":26,"Backend":{"Type":"vxlan","VIN":2}}"#);
    assert_eq!(c.ipv4.as_ref().unwrap().subnet_len, 24);
    for k in ["SubnetLne", "VIN"] {
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains(&format!("unknown key \"{k}\""))),
            "{:?}",
            c.warnings
        );
    }
    let clean = ok(r#"{"Network":"10.3.0.0/16","Backend":{"Type":"vxlan","VNI":2}}"#);
    assert!(
        !clean.warnings.iter().any(|w| w.contains("unknown key")),
        "{:?}",
        clean.warnings
    );
}

/// config_test.go:51 TestIPv6ConfigDefaults: an IPv6-only config in lower-case keys, read
/// with flanneld's defaults (the upstream expectations). Without a Backend it is udp,
/// which carries IPv4 only: the whole config is refused by name; with vxlan it is taken.
#[test]
fn ipv6_config_defaults() {
    let json = r#"{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false }"#;
    let c = Ipv6Config::parse(json)
        .unwrap()
        .expect("EnableIPv6 is true");
    assert_eq!(c.network.to_string(), "fc00::/48");
    assert_eq!(c.subnet_min.to_string(), "fc00:0:0:1::");
    assert_eq!(c.subnet_max.to_string(), "fc00:0:0:ffff::");
    assert_eq!(c.subnet_len, 64);
    refused(json, "udp backend carries IPv4 only");
    let c = ok(&json.replace(" }", r#", "backend": {"type": "vxlan"} }"#));
    assert_eq!(c.ipv4, None);
    assert_eq!(c.ipv6.unwrap().subnet_max.to_string(), "fc00:0:0:ffff::");
}

/// config_test.go:107 TestIPv6ConfigOverrides.
#[test]
fn ipv6_config_overrides() {
    let json = r#"{ "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::", "IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124, "enableIPv4": false }"#;
    let c = Ipv6Config::parse(json)
        .unwrap()
        .expect("EnableIPv6 is true");
    assert_eq!(c.network.to_string(), "fc00::/48");
    assert_eq!(c.subnet_min.to_string(), "fc00:0:0:1::");
    assert_eq!(c.subnet_max.to_string(), "fc00:0:0:f::");
    assert_eq!(c.subnet_len, 124);
    refused(json, "udp backend carries IPv4 only");
    let c = ok(&json.replace(" }", r#", "Backend": {"Type": "host-gw"} }"#));
    assert_eq!(c.ipv4, None);
    assert_eq!(c.ipv6.unwrap().subnet_len, 124);
}

/// The same two configs made dual-stack (an IPv4 Network beside, EnableIPv4 left to its
/// default, a vxlan backend): weft runs them, with flanneld's IPv6 values.
#[test]
fn dual_stack_versions_of_flannels_ipv6_cases() {
    let c = ok(
        r#"{ "network": "10.3.0.0/16", "enableIPv6": true, "ipv6Network": "fc00::/48", "backend": {"type": "vxlan"} }"#,
    );
    assert_eq!(c.network().unwrap().to_string(), "10.3.0.0/16");
    let v6 = c.ipv6.expect("EnableIPv6 is true");
    assert_eq!(v6.subnet_min.to_string(), "fc00:0:0:1::");
    assert_eq!(v6.subnet_max.to_string(), "fc00:0:0:ffff::");
    assert_eq!(v6.subnet_len, 64);
    let c = ok(
        r#"{ "Network": "10.3.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::", "IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124, "Backend": {"Type": "host-gw"} }"#,
    );
    let v6 = c.ipv6.expect("EnableIPv6 is true");
    assert_eq!(v6.subnet_len, 124);
    assert_eq!(v6.subnet_max.to_string(), "fc00:0:0:f::");
}

/// CheckNetworkConfig's IPv6 errors, each named: no IPv6Network ("please define a correct
/// IPv6Network parameter"), a length over 126 or under the prefix + 2, a network smaller
/// than a /124, bounds outside the network or off a boundary.
#[test]
fn flanneld_ipv6_checks() {
    let dual = |v6: &str| {
        format!(r#"{{"Network":"10.3.0.0/16","EnableIPv6":true,{v6}"Backend":{{"Type":"vxlan"}}}}"#)
    };
    for (v6, why) in [
        ("", "IPv6Network is missing"),
        (r#""IPv6Network":"::/0","#, "whole address space"),
        (
            r#""IPv6Network":"fc00::/48","IPv6SubnetLen":127,"#,
            "IPv6SubnetLen 127",
        ),
        (
            r#""IPv6Network":"fc00::/48","IPv6SubnetLen":49,"#,
            "IPv6SubnetLen 49",
        ),
        (r#""IPv6Network":"fc00::/125","#, "/124"),
        (
            r#""IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::","#,
            "IPv6SubnetMin fc01:: is outside",
        ),
        (
            r#""IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00::1","#,
            "IPv6SubnetMax fc00::1 is not on an IPv6SubnetLen (/64) boundary",
        ),
        (r#""IPv6Network":"ff00::/48","#, "multicast"),
    ] {
        refused(&dual(v6), why);
    }
}
