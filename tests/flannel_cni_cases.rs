//! flannel-io/cni-plugin's own cases (`flannel_linux_test.go`, commit 092e6d2; the line of
//! each is named), run against weft-cni's pure core: the inputs and expected delegate
//! configs are the upstream test's, the code under test is weft's, for IPv4-only,
//! IPv6-only and dual-stack nodes.

use std::path::Path;

use serde_json::{json, Value};
use weft::cni::flannel::{
    delegate_conf, plugin_conf, FlannelEnv, DEFAULT_DATA_DIR, DEFAULT_SUBNET_FILE,
};

/// flannel_linux_test.go:81 `onlyIpv4FlannelSubnetEnv`.
const IPV4_ENV: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
/// flannel_linux_test.go:102 `onlyIpv4MultipleNetworksFlannelSubnetEnv`.
const IPV4_TWO_NETWORKS_ENV: &str = "\nFLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
/// flannel_linux_test.go:87 `onlyIpv6FlannelSubnetEnv`.
const IPV6_ENV: &str = "\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
/// flannel_linux_test.go:93 `dualStackFlannelSubnetEnv`.
const DUAL_STACK_ENV: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

/// flannel_linux_test.go:63 `inputTemplate`, with `ipam` as makeInput adds it.
fn input(ipam: Option<Value>) -> serde_json::Map<String, Value> {
    let mut v = json!({
        "name": "cni-flannel",
        "type": "flannel",
        "subnetFile": "/tmp/subnet.env",
        "dataDir": "/tmp/dataDir"
    });
    if let Some(i) = ipam {
        v["ipam"] = i;
    }
    v.as_object().unwrap().clone()
}

/// flannel_linux_test.go:116 `makeInputIPAM` (template :71): the given type and routes and an
/// unknown key.
fn input_ipam(ipam_type: &str, routes: Value) -> Value {
    let mut v = json!({"unknown-param": "unknown-value", "routes": routes});
    if !ipam_type.is_empty() {
        v["type"] = ipam_type.into();
    }
    v
}

fn env(text: &str) -> FlannelEnv {
    FlannelEnv::parse(text, Path::new("subnet.env")).unwrap()
}

/// flannel_linux_test.go:164: the delegate config saved for an IPv4-only node.
#[test]
fn ipv4_stack_delegate_config() {
    let d = delegate_conf(&plugin_conf(&input(None)).unwrap(), &env(IPV4_ENV)).unwrap();
    let expected = json!({
        "ipMasq": false,
        "ipam": {
            "routes": [{"dst": "10.1.0.0/16"}],
            "ranges": [[{"subnet": "10.1.17.0/24"}]],
            "type": "host-local"
        },
        "isGateway": true,
        "mtu": 1472,
        "name": "cni-flannel",
        "type": "bridge"
    });
    assert_eq!(Value::Object(d), expected);
}

/// flannel_linux_test.go:242: two networks, a route to each.
#[test]
fn ipv4_stack_with_two_networks() {
    let d = delegate_conf(
        &plugin_conf(&input(None)).unwrap(),
        &env(IPV4_TWO_NETWORKS_ENV),
    )
    .unwrap();
    assert_eq!(
        d["ipam"]["routes"],
        json!([{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}])
    );
    assert_eq!(d["ipam"]["ranges"], json!([[{"subnet": "10.1.17.0/24"}]]));
}

/// flannel_linux_test.go:490 and :523: subnetFile and dataDir given, or defaulted.
#[test]
fn load_flannel_net_conf() {
    let c = plugin_conf(&input(None)).unwrap();
    assert_eq!(c.subnet_file, Path::new("/tmp/subnet.env"));
    assert_eq!(c.data_dir, Path::new("/tmp/dataDir"));
    let mut defaults = input(None);
    defaults.remove("subnetFile");
    defaults.remove("dataDir");
    let c = plugin_conf(&defaults).unwrap();
    assert_eq!(c.subnet_file, Path::new(DEFAULT_SUBNET_FILE));
    assert_eq!(c.data_dir, Path::new(DEFAULT_DATA_DIR));
}

/// flannel_linux_test.go:578: a valid IPv4 subnet.env.
#[test]
fn load_flannel_subnet_env() {
    let e = env(IPV4_ENV);
    assert_eq!(e.networks.len(), 1);
    assert_eq!(e.networks[0].to_string(), "10.1.0.0/16");
    assert_eq!(e.subnet.unwrap().to_string(), "10.1.17.0/24");
    assert!(e.ipv6_networks.is_empty());
    assert_eq!(e.ipv6_subnet, None);
    assert_eq!(e.mtu, 1472);
    assert!(e.ipmasq);
}

/// flannel_linux_test.go:616, :626 and :636 (the IPv4, IPv6 and dual-stack contexts, one
/// input): `foo=bar` names every missing key, IPv6 alternatives too.
#[test]
fn an_invalid_subnet_env_names_what_is_missing() {
    let e = FlannelEnv::parse("foo=bar", Path::new("subnet.env")).unwrap_err();
    assert!(
        e.msg.contains("missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"),
        "{e}"
    );
}

/// flannel_linux_test.go:649: the input IPAM kept (type, unknown keys, routes), the pod
/// network's route after the given ones, the node's range added.
#[test]
fn delegate_ipam_keeps_the_input_ipam() {
    let conf = plugin_conf(&input(Some(input_ipam("my-ipam", input_ipam_routes())))).unwrap();
    let d = delegate_conf(&conf, &env(IPV4_ENV)).unwrap();
    let expected = json!({
        "type": "my-ipam",
        "unknown-param": "unknown-value",
        "routes": [
            {"dst": "10.96.0.0/12"},
            {"dst": "192.168.244.0/24", "gw": "10.1.17.20"},
            {"dst": "10.1.0.0/16"}
        ],
        "ranges": [[{"subnet": "10.1.17.0/24"}]]
    });
    assert_eq!(d["ipam"], expected);
}

/// flannel_linux_test.go:671: host-local with no routes of its own, two networks.
#[test]
fn delegate_ipam_with_two_networks() {
    let conf = plugin_conf(&input(Some(input_ipam("host-local", json!([]))))).unwrap();
    let d = delegate_conf(&conf, &env(IPV4_TWO_NETWORKS_ENV)).unwrap();
    assert_eq!(
        d["ipam"]["routes"],
        json!([{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}])
    );
}

/// flannel_linux_test.go:77 `inputIPAMRoutes`.
fn input_ipam_routes() -> Value {
    json!([{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}])
}

/// flannel_linux_test.go:354: the delegate config saved for an IPv6-only node.
#[test]
fn ipv6_stack_delegate_config() {
    let d = delegate_conf(&plugin_conf(&input(None)).unwrap(), &env(IPV6_ENV)).unwrap();
    let expected = json!({
        "ipMasq": false,
        "ipam": {
            "routes": [{"dst": "fc00::/48"}],
            "ranges": [[{"subnet": "fc00::/64"}]],
            "type": "host-local"
        },
        "isGateway": true,
        "mtu": 1472,
        "name": "cni-flannel",
        "type": "bridge"
    });
    assert_eq!(Value::Object(d), expected);
}

/// flannel_linux_test.go:433: the delegate config saved for a dual-stack node: a range set
/// per family, IPv4 first, and a route to each network.
#[test]
fn dual_stack_delegate_config() {
    let d = delegate_conf(&plugin_conf(&input(None)).unwrap(), &env(DUAL_STACK_ENV)).unwrap();
    let expected = json!({
        "ipMasq": false,
        "ipam": {
            "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
            "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
            "type": "host-local"
        },
        "isGateway": true,
        "mtu": 1472,
        "name": "cni-flannel",
        "type": "bridge"
    });
    assert_eq!(Value::Object(d), expected);
}

/// flannel_linux_test.go:591 and :603: valid IPv6-only and dual-stack subnet.env files.
#[test]
fn load_ipv6_and_dual_stack_subnet_envs() {
    let e = env(IPV6_ENV);
    assert!(e.networks.is_empty());
    assert_eq!(e.subnet, None);
    assert_eq!(e.ipv6_networks.len(), 1);
    assert_eq!(e.ipv6_networks[0].to_string(), "fc00::/48");
    assert_eq!(e.ipv6_subnet.unwrap().to_string(), "fc00::/64");
    assert_eq!(e.mtu, 1472);
    assert!(e.ipmasq);
    let e = env(DUAL_STACK_ENV);
    assert_eq!(e.networks[0].to_string(), "10.1.0.0/16");
    assert_eq!(e.subnet.unwrap().to_string(), "10.1.17.0/24");
    assert_eq!(e.ipv6_networks[0].to_string(), "fc00::/48");
    assert_eq!(e.ipv6_subnet.unwrap().to_string(), "fc00::/64");
    assert_eq!(e.mtu, 1472);
    assert!(e.ipmasq);
}

/// flannel_linux_test.go:713 and :735: the input IPAM (type `my-ipam`, an unknown key, two
/// routes) kept on an IPv6-only and a dual-stack node, the networks' routes after the
/// given ones, `ranges` one set per family.
#[test]
fn delegate_ipam_keeps_the_input_ipam_in_ipv6_and_dual_stack() {
    let conf = plugin_conf(&input(Some(input_ipam("my-ipam", input_ipam_routes())))).unwrap();
    let d = delegate_conf(&conf, &env(IPV6_ENV)).unwrap();
    let expected = json!({
        "type": "my-ipam",
        "unknown-param": "unknown-value",
        "routes": [
            {"dst": "10.96.0.0/12"},
            {"dst": "192.168.244.0/24", "gw": "10.1.17.20"},
            {"dst": "fc00::/48"}
        ],
        "ranges": [[{"subnet": "fc00::/64"}]]
    });
    assert_eq!(d["ipam"], expected);
    let d = delegate_conf(&conf, &env(DUAL_STACK_ENV)).unwrap();
    let expected = json!({
        "type": "my-ipam",
        "unknown-param": "unknown-value",
        "routes": [
            {"dst": "10.96.0.0/12"},
            {"dst": "192.168.244.0/24", "gw": "10.1.17.20"},
            {"dst": "10.1.0.0/16"},
            {"dst": "fc00::/48"}
        ],
        "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]
    });
    assert_eq!(d["ipam"], expected);
}

/// flannel_linux_test.go:757, :778 and :799: an input IPAM without `type` becomes
/// host-local, on IPv4-only, IPv6-only and dual-stack nodes.
#[test]
fn delegate_ipam_without_type_is_host_local_in_every_stack() {
    let conf = plugin_conf(&input(Some(input_ipam("", input_ipam_routes())))).unwrap();
    let given = input_ipam_routes().as_array().unwrap().clone();
    for (text, ranges, pod_routes) in [
        (
            IPV4_ENV,
            json!([[{"subnet": "10.1.17.0/24"}]]),
            vec![json!({"dst": "10.1.0.0/16"})],
        ),
        (
            IPV6_ENV,
            json!([[{"subnet": "fc00::/64"}]]),
            vec![json!({"dst": "fc00::/48"})],
        ),
        (
            DUAL_STACK_ENV,
            json!([[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]),
            vec![json!({"dst": "10.1.0.0/16"}), json!({"dst": "fc00::/48"})],
        ),
    ] {
        let d = delegate_conf(&conf, &env(text)).unwrap();
        let mut routes = given.clone();
        routes.extend(pod_routes);
        let expected = json!({
            "type": "host-local",
            "unknown-param": "unknown-value",
            "routes": routes,
            "ranges": ranges
        });
        assert_eq!(d["ipam"], expected, "{text}");
    }
}
