//! The device's side of TLS: the default transport's HTTPS is `fieldsync-https`
//! (rustls, the system's authorities plus the folder's `--ca-cert`); what is left here
//! is the warning about plain http.

pub use fieldsync_https::parse_ca;

/// Whether `server` is plain `http://` to a host other than this machine: its
/// passwords and secrets would cross the network readable by anyone on the way.
pub fn plain_http_elsewhere(server: &str) -> bool {
    let Some(rest) = server.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback());
    !(loopback || host.eq_ignore_ascii_case("localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_flagged_off_this_machine_only() {
        for here in [
            "http://127.0.0.1:8440",
            "http://127.8.9.1",
            "http://[::1]:80/x",
            "http://[::ffff:127.0.0.1]:8440",
            "http://localhost:1",
            "https://fieldsync.example",
            "https://10.0.0.5:8440",
        ] {
            assert!(!plain_http_elsewhere(here), "{here}");
        }
        for away in [
            "http://10.0.0.5:8440",
            "http://fieldsync.example",
            "http://[2001:db8::1]:8440",
            "http://localhost.evil.example",
        ] {
            assert!(plain_http_elsewhere(away), "{away}");
        }
    }
}
