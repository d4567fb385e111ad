//! Why a frame did not decode to a UDP datagram: one variant per reason, its name (kebab-case, e.g.
//! `link-truncated`) the stable one of the probe's summary and metrics. `Undecoded::COUNT` (strum's
//! `EnumCount`) and `usize::from` let a caller count them in an array.

/// Why a frame was not decoded (a counted drop).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumCount, strum::Display, strum::IntoStaticStr, strum::VariantArray,
)]
#[strum(serialize_all = "kebab-case")]
pub enum Undecoded {
    LinkTruncated,
    LinkTypeUnsupported,
    LinkTooManyTags,
    NotIp,
    IpMalformed,
    NotUdp,
    /// TCP, which GTP does not use (counted apart: a mirror that carries other traffic).
    NotUdpTcp,
    UdpMalformed,
    /// A mirror session the operator's `--encap-id` left out.
    MirrorIdFiltered,
    EncapTooDeep,
    EncapInFragment,
    GreMalformed,
    GreUnsupported,
    ErspanMalformed,
    VxlanMalformed,
    GeneveMalformed,
    GeneveUnsupported,
    FragmentTableFull,
    FragmentInvalid,
    /// Fragments of an outer packet whose other fragments never came.
    FragmentTimeout,
}

impl From<Undecoded> for usize {
    fn from(reason: Undecoded) -> usize {
        reason as usize
    }
}

impl Undecoded {
    /// The stable name (`link-truncated`).
    pub fn name(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    /// The names are the ones the summary and the metrics have always carried.
    #[test]
    fn names_are_the_published_ones() {
        let names: Vec<&str> = Undecoded::VARIANTS.iter().map(|r| r.name()).collect();
        let shown: Vec<String> = Undecoded::VARIANTS.iter().map(|r| r.to_string()).collect();
        assert_eq!(names, shown, "Display shows the name");
        assert_eq!(
            names,
            [
                "link-truncated",
                "link-type-unsupported",
                "link-too-many-tags",
                "not-ip",
                "ip-malformed",
                "not-udp",
                "not-udp-tcp",
                "udp-malformed",
                "mirror-id-filtered",
                "encap-too-deep",
                "encap-in-fragment",
                "gre-malformed",
                "gre-unsupported",
                "erspan-malformed",
                "vxlan-malformed",
                "geneve-malformed",
                "geneve-unsupported",
                "fragment-table-full",
                "fragment-invalid",
                "fragment-timeout",
            ]
        );
    }
}
