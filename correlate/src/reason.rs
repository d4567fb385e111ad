//! What the correlator counts: why a datagram was not fully processed ([`DropReason`]) and what is
//! worth knowing that is not a drop ([`Note`]). One variant per reason, counted in an array indexed by
//! the variant ([`Counts`]), so counting costs an increment on the hot path. A variant's name
//! (kebab-case, e.g. `udp-not-gtp-port`) is the stable one of the probe's summary and metrics.
use std::collections::BTreeMap;
use std::marker::PhantomData;
use strum::{EnumCount, VariantArray};

/// Why a datagram was not fully processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumCount, strum::Display, strum::IntoStaticStr, VariantArray)]
#[strum(serialize_all = "kebab-case")]
pub enum DropReason {
    /// Neither port is a GTP port of the configuration.
    UdpNotGtpPort,
    GtpTruncated,
    GtpBadVersion,
    /// A GTP' (charging) message on a GTP port.
    GtpPrime,
    GtpcBadVersion,
    GtpcIeTruncated,
    GtpcUnknownTvIe,
    GtpcBadIe,
    /// A GTPv2 message without the sequence number it must carry.
    GtpcNoSequence,
    GtpuTooManyExtensions,
    GtpuZeroLengthExtension,
    InnerIpMalformed,
    InnerIpFragment,
    InnerTcpMalformed,
    InnerUdpMalformed,
    PendingTableFull,
    SessionTableFull,
    GsnTableFull,
    FlowTableFull,
}

/// Worth counting, not a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumCount, strum::Display, strum::IntoStaticStr, VariantArray)]
#[strum(serialize_all = "kebab-case")]
pub enum Note {
    GPduDownlink,
    GPduUnknownTunnel,
    /// A G-PDU whose inner source is not the session's UE address (attributed by its tunnel).
    InnerSourceNotUeIp,
    AttributedByUeIp,
    /// An unknown tunnel the UE-address fallback would have attributed (off by default).
    UnknownTunnelUeIpHeld,
    TcpRetransmission,
    TcpGap,
    FlowTableFull,
    DnsNotAQuery,
    TlsClientHelloTruncated,
    TlsNoServerName,
    TokenLookAlike,
    SightingDuplicate,
    IdentityConflict,
    GtpcRequestRetransmitted,
    GtpcRequestUnanswered,
    GtpcRequestWithoutControlTeid,
    GtpcResponseWithoutTeid,
    GtpcResponseFromOtherAddress,
    GtpcResponseByProofOnly,
    GtpcResponseWithoutRequest,
    GtpcResponseTeidMismatch,
    GtpcResponseLate,
    GtpcResponseAmbiguous,
    GtpcResponseTypeMismatch,
    GtpcSecondaryWithoutPrimary,
    GtpcUnknownContext,
    GtpcCreateRejected,
    GtpcUpdateRejected,
    GtpcDeleteRejected,
    PendingSequenceCrowded,
    /// Sessions the table left out of a crowded index (`session::SHARED_KEY_MAX`): a level, not a count.
    ControlKeyCrowded,
    UeIpCrowded,
}

/// What [`Counts`] can count: an enum of reasons whose variants convert to their index and their name
/// (the capture crate's `Undecoded` is one too).
pub trait Reason: Copy + Into<usize> + Into<&'static str> + VariantArray + 'static {}
impl<R: Copy + Into<usize> + Into<&'static str> + VariantArray + 'static> Reason for R {}

fn index<R: Reason>(reason: R) -> usize {
    reason.into()
}

/// A reason's stable name.
pub fn name<R: Reason>(reason: R) -> &'static str {
    reason.into()
}

impl From<DropReason> for usize {
    #[inline(always)]
    fn from(reason: DropReason) -> usize {
        reason as usize
    }
}

impl From<Note> for usize {
    #[inline(always)]
    fn from(reason: Note) -> usize {
        reason as usize
    }
}

impl DropReason {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl Note {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// One counter per reason, in an array.
#[derive(Clone, PartialEq, Eq)]
pub struct Counts<R, const N: usize> {
    counts: [u64; N],
    kind: PhantomData<R>,
}

pub type DropCounts = Counts<DropReason, { DropReason::COUNT }>;
pub type NoteCounts = Counts<Note, { Note::COUNT }>;

impl<R: Reason, const N: usize> Counts<R, N> {
    #[inline(always)]
    pub fn add(&mut self, reason: R) {
        if let Some(count) = self.counts.get_mut(index(reason)) {
            *count += 1;
        }
    }

    /// Sets a reason's counter (for the levels among the notes).
    pub fn set(&mut self, reason: R, value: u64) {
        if let Some(count) = self.counts.get_mut(index(reason)) {
            *count = value;
        }
    }

    pub fn get(&self, reason: R) -> u64 {
        self.counts.get(index(reason)).copied().unwrap_or(0)
    }

    /// Adds another set of counters to these, reason by reason.
    pub fn merge(&mut self, other: &Self) {
        for (count, more) in self.counts.iter_mut().zip(&other.counts) {
            *count += more;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The reasons counted at least once, with their counts, in declaration order.
    pub fn nonzero(&self) -> impl Iterator<Item = (R, u64)> + '_ {
        R::VARIANTS.iter().zip(&self.counts).filter(|(_, &count)| count > 0).map(|(&reason, &count)| (reason, count))
    }

    /// The reasons counted at least once, by name.
    pub fn by_name(&self) -> BTreeMap<&'static str, u64> {
        self.nonzero().map(|(reason, count)| (name(reason), count)).collect()
    }
}

impl<R, const N: usize> Default for Counts<R, N> {
    fn default() -> Self {
        Counts { counts: [0; N], kind: PhantomData }
    }
}

impl<R: Reason, const N: usize> std::fmt::Debug for Counts<R, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.nonzero().map(|(reason, count)| (name(reason), count))).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are the ones the summary and the metrics have always carried, each once.
    #[test]
    fn names_are_the_published_ones() {
        let drops: Vec<&str> = DropReason::VARIANTS.iter().map(|r| r.name()).collect();
        let shown: Vec<String> = DropReason::VARIANTS.iter().map(|r| r.to_string()).collect();
        assert_eq!(drops, shown, "Display shows the name");
        assert_eq!(
            drops,
            [
                "udp-not-gtp-port",
                "gtp-truncated",
                "gtp-bad-version",
                "gtp-prime",
                "gtpc-bad-version",
                "gtpc-ie-truncated",
                "gtpc-unknown-tv-ie",
                "gtpc-bad-ie",
                "gtpc-no-sequence",
                "gtpu-too-many-extensions",
                "gtpu-zero-length-extension",
                "inner-ip-malformed",
                "inner-ip-fragment",
                "inner-tcp-malformed",
                "inner-udp-malformed",
                "pending-table-full",
                "session-table-full",
                "gsn-table-full",
                "flow-table-full",
            ]
        );
        let notes: Vec<&str> = Note::VARIANTS.iter().map(|r| r.name()).collect();
        assert_eq!(
            notes,
            [
                "g-pdu-downlink",
                "g-pdu-unknown-tunnel",
                "inner-source-not-ue-ip",
                "attributed-by-ue-ip",
                "unknown-tunnel-ue-ip-held",
                "tcp-retransmission",
                "tcp-gap",
                "flow-table-full",
                "dns-not-a-query",
                "tls-client-hello-truncated",
                "tls-no-server-name",
                "token-look-alike",
                "sighting-duplicate",
                "identity-conflict",
                "gtpc-request-retransmitted",
                "gtpc-request-unanswered",
                "gtpc-request-without-control-teid",
                "gtpc-response-without-teid",
                "gtpc-response-from-other-address",
                "gtpc-response-by-proof-only",
                "gtpc-response-without-request",
                "gtpc-response-teid-mismatch",
                "gtpc-response-late",
                "gtpc-response-ambiguous",
                "gtpc-response-type-mismatch",
                "gtpc-secondary-without-primary",
                "gtpc-unknown-context",
                "gtpc-create-rejected",
                "gtpc-update-rejected",
                "gtpc-delete-rejected",
                "pending-sequence-crowded",
                "control-key-crowded",
                "ue-ip-crowded",
            ]
        );
    }

    #[test]
    fn counts_by_reason() {
        let mut counts = NoteCounts::default();
        counts.add(Note::TcpGap);
        counts.add(Note::TcpGap);
        counts.set(Note::UeIpCrowded, 7);
        assert_eq!(counts.get(Note::TcpGap), 2);
        assert_eq!(counts.total(), 9);
        assert_eq!(counts.by_name(), BTreeMap::from([("tcp-gap", 2), ("ue-ip-crowded", 7)]));
        assert_eq!(format!("{counts:?}"), r#"{"tcp-gap": 2, "ue-ip-crowded": 7}"#);
    }
}
