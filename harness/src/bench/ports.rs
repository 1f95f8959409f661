//! The bench's listening ports against the kernel's ephemeral range: a listener port the
//! kernel may hand to an outgoing connection can fail its bind with "address in use".

use std::ops::RangeInclusive;

/// The ports of `ports` that the kernel may pick as a source port: inside
/// `net.ipv4.ip_local_port_range` and not in `net.ipv4.ip_local_reserved_ports`.
pub fn exposed(ports: &[u16], range: &str, reserved: &str) -> Vec<u16> {
    let Some(range) = parse_range(range) else {
        return Vec::new();
    };
    let reserved = parse_reserved(reserved);
    ports
        .iter()
        .copied()
        .filter(|p| range.contains(p) && !reserved.iter().any(|r| r.contains(p)))
        .collect()
}

/// Reads both settings from /proc and returns [`exposed`]'s answer (none where /proc
/// does not have them).
pub fn exposed_here(ports: &[u16]) -> Vec<u16> {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"));
    match (read("ip_local_port_range"), read("ip_local_reserved_ports")) {
        (Ok(range), Ok(reserved)) => exposed(ports, &range, &reserved),
        _ => Vec::new(),
    }
}

/// "32768\t60999" as the range it names.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) => Some(lo..=hi),
        _ => None,
    }
}

/// "8080,19100-19199" as its ranges; an empty file reserves nothing.
fn parse_reserved(text: &str) -> Vec<RangeInclusive<u16>> {
    text.trim()
        .split(',')
        .filter(|item| !item.is_empty())
        .filter_map(|item| match item.split_once('-') {
            Some((lo, hi)) => Some(lo.trim().parse().ok()?..=hi.trim().parse().ok()?),
            None => {
                let port = item.trim().parse().ok()?;
                Some(port..=port)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH: [u16; 3] = [19100, 19110, 19190];

    #[test]
    fn the_default_range_leaves_the_bench_ports_alone() {
        assert!(exposed(&BENCH, "32768\t60999\n", "\n").is_empty());
    }

    #[test]
    fn a_widened_range_exposes_every_unreserved_bench_port() {
        assert_eq!(exposed(&BENCH, "10000\t65000\n", "\n"), BENCH.to_vec());
        assert_eq!(exposed(&BENCH, "10000 65000", "19110"), vec![19100, 19190]);
    }

    #[test]
    fn reserving_the_bench_block_covers_all_of_it() {
        assert!(exposed(&BENCH, "10000\t65000\n", "8080,19100-19199\n").is_empty());
    }

    #[test]
    fn unreadable_settings_expose_nothing() {
        assert!(exposed(&BENCH, "", "").is_empty());
        assert_eq!(
            exposed(&BENCH, "10000 65000", "x,19100"),
            vec![19110, 19190]
        );
    }
}
