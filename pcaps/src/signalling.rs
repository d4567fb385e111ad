//! The generator's signalling: GTPv1 Create/Update/Delete PDP Context and GTPv2 Create Session /
//! Modify Bearer / Delete Session exchanges, with GSN addresses true to the IP headers, and the
//! subscribers they are for.
use crate::gtp_bytes::*;
use crate::*;

impl<'s, S: FrameSink> Generator<'s, S> {
    // -------------------------------------------------------------------------------------- signalling

    pub(crate) fn create(&mut self, sub: &mut Subscriber, accept: bool) {
        self.tick(20_000);
        let seq = self.seq();
        if sub.v2 {
            let sequence = u32::from(seq);
            let mut ies = Vec::new();
            v2_ie(&mut ies, 1, 0, &tbcd(&sub.imsi));
            v2_ie(&mut ies, 76, 0, &tbcd(&sub.msisdn));
            v2_ie(&mut ies, 75, 0, &tbcd(&sub.imei));
            v2_ie(&mut ies, 82, 0, &[6]); // RAT Type: EUTRAN
            v2_ie(&mut ies, 86, 0, &v2_uli(sub));
            v2_ie(&mut ies, 87, 0, &v2_fteid(6, sub.access_control.1, sub.access_control.0));
            v2_ie(&mut ies, 71, 0, &apn_labels(sub.apn));
            v2_ie(&mut ies, 79, 0, &[1, 0, 0, 0, 0]);
            let mut bearer = Vec::new();
            v2_ie(&mut bearer, 73, 0, &[5]);
            v2_ie(&mut bearer, 87, 2, &v2_fteid(4, sub.access_user.1, sub.access_user.0));
            v2_ie(&mut ies, 93, 0, &bearer);
            let request = v2_message(32, 0, sequence, &ies);
            self.udp((sub.access_control.0, 2123), (sub.core_control.0, 2123), &request);
            self.tick(5_000);
            let mut ies = Vec::new();
            v2_ie(&mut ies, 2, 0, &[if accept { 16 } else { 73 }, 0]);
            if accept {
                v2_ie(&mut ies, 87, 0, &v2_fteid(7, sub.core_control.1, sub.core_control.0));
                let mut paa = vec![1];
                paa.extend_from_slice(&sub.ue_ipv4.octets());
                v2_ie(&mut ies, 79, 0, &paa);
                let mut bearer = Vec::new();
                v2_ie(&mut bearer, 73, 0, &[5]);
                v2_ie(&mut bearer, 2, 0, &[16, 0]);
                v2_ie(&mut bearer, 87, 2, &v2_fteid(5, sub.core_user.1, sub.core_user.0));
                v2_ie(&mut ies, 93, 0, &bearer);
            }
            let response = v2_message(33, sub.access_control.1, sequence, &ies);
            self.udp((sub.core_control.0, 2123), (sub.access_control.0, 2123), &response);
        } else {
            let mut ies = Vec::new();
            ies.push(2);
            ies.extend_from_slice(&tbcd(&sub.imsi));
            ies.extend_from_slice(&[14, 3, 15, 0xFC]);
            ies.push(16);
            ies.extend_from_slice(&sub.access_user.1.to_be_bytes());
            ies.push(17);
            ies.extend_from_slice(&sub.access_control.1.to_be_bytes());
            ies.extend_from_slice(&[20, 5]);
            v1_tlv(&mut ies, 128, &[0xF1, if sub.ue_ipv6.is_some() { 0x8D } else { 0x21 }]);
            v1_tlv(&mut ies, 131, &apn_labels(sub.apn));
            v1_tlv(&mut ies, 133, &sub.access_control.0.octets());
            v1_tlv(&mut ies, 133, &sub.access_user.0.octets());
            let mut msisdn = vec![0x91];
            msisdn.extend_from_slice(&tbcd(&sub.msisdn));
            v1_tlv(&mut ies, 134, &msisdn);
            v1_tlv(&mut ies, 151, &[1]);
            v1_tlv(&mut ies, 152, &v1_uli(sub));
            v1_tlv(&mut ies, 154, &tbcd(&sub.imei));
            let request = v1_message(16, 0, seq, &ies);
            self.udp((sub.access_control.0, 2123), (sub.core_control.0, 2123), &request);
            self.tick(5_000);
            let mut ies = vec![1, if accept { 128 } else { 199 }];
            if accept {
                ies.extend_from_slice(&[8, 0xFE, 14, 7]); // Reordering required, Recovery
                ies.push(16);
                ies.extend_from_slice(&sub.core_user.1.to_be_bytes());
                ies.push(17);
                ies.extend_from_slice(&sub.core_control.1.to_be_bytes());
                ies.push(127);
                ies.extend_from_slice(&(self.rng.next_u64() as u32).to_be_bytes());
                let mut eua = vec![0xF1, if sub.ue_ipv6.is_some() { 0x8D } else { 0x21 }];
                eua.extend_from_slice(&sub.ue_ipv4.octets());
                if let Some(v6) = sub.ue_ipv6 {
                    eua.extend_from_slice(&v6.octets());
                }
                v1_tlv(&mut ies, 128, &eua);
                v1_tlv(&mut ies, 133, &sub.core_control.0.octets());
                v1_tlv(&mut ies, 133, &sub.core_user.0.octets());
            }
            let response = v1_message(17, sub.access_control.1, seq, &ies);
            self.udp((sub.core_control.0, 2123), (sub.access_control.0, 2123), &response);
        }
        if accept {
            self.truth.sessions_up.push(sub.msisdn.clone());
        }
    }

    /// Moves a GTPv1 context to SGSN 2 (Update PDP Context) or a GTPv2 one to new SGW TEIDs (Modify Bearer).
    pub(crate) fn update(&mut self, sub: &mut Subscriber) {
        self.tick(20_000);
        let seq = self.seq();
        if sub.v2 {
            let new_user = (SGW_USER, self.teid());
            let mut ies = Vec::new();
            let mut bearer = Vec::new();
            v2_ie(&mut bearer, 73, 0, &[5]);
            v2_ie(&mut bearer, 87, 1, &v2_fteid(4, new_user.1, new_user.0));
            v2_ie(&mut ies, 93, 0, &bearer);
            let request = v2_message(34, sub.core_control.1, u32::from(seq), &ies);
            self.udp((sub.access_control.0, 2123), (sub.core_control.0, 2123), &request);
            self.tick(5_000);
            let mut ies = Vec::new();
            v2_ie(&mut ies, 2, 0, &[16, 0]);
            let response = v2_message(35, sub.access_control.1, u32::from(seq), &ies);
            self.udp((sub.core_control.0, 2123), (sub.access_control.0, 2123), &response);
            sub.access_user = new_user;
        } else {
            let new_control = (SGSN_2, self.teid());
            let new_user = (SGSN_2_USER, self.teid());
            let mut ies = Vec::new();
            ies.extend_from_slice(&[14, 3]);
            ies.push(16);
            ies.extend_from_slice(&new_user.1.to_be_bytes());
            ies.push(17);
            ies.extend_from_slice(&new_control.1.to_be_bytes());
            ies.extend_from_slice(&[20, 5]);
            v1_tlv(&mut ies, 133, &new_control.0.octets());
            v1_tlv(&mut ies, 133, &new_user.0.octets());
            let request = v1_message(18, sub.core_control.1, seq, &ies);
            self.udp((new_control.0, 2123), (sub.core_control.0, 2123), &request);
            self.tick(5_000);
            let mut ies = vec![1, 128];
            ies.push(16);
            ies.extend_from_slice(&sub.core_user.1.to_be_bytes());
            ies.push(17);
            ies.extend_from_slice(&sub.core_control.1.to_be_bytes());
            v1_tlv(&mut ies, 133, &sub.core_control.0.octets());
            v1_tlv(&mut ies, 133, &sub.core_user.0.octets());
            let response = v1_message(19, new_control.1, seq, &ies);
            self.udp((sub.core_control.0, 2123), (new_control.0, 2123), &response);
            sub.access_control = new_control;
            sub.access_user = new_user;
        }
    }

    pub(crate) fn delete(&mut self, sub: &Subscriber) {
        self.tick(20_000);
        let seq = self.seq();
        if sub.v2 {
            let mut ies = Vec::new();
            v2_ie(&mut ies, 73, 0, &[5]);
            let request = v2_message(36, sub.core_control.1, u32::from(seq), &ies);
            self.udp((sub.access_control.0, 2123), (sub.core_control.0, 2123), &request);
            self.tick(5_000);
            let mut ies = Vec::new();
            v2_ie(&mut ies, 2, 0, &[16, 0]);
            let response = v2_message(37, sub.access_control.1, u32::from(seq), &ies);
            self.udp((sub.core_control.0, 2123), (sub.access_control.0, 2123), &response);
        } else {
            let request = v1_message(20, sub.core_control.1, seq, &[19, 1, 20, 5]);
            self.udp((sub.access_control.0, 2123), (sub.core_control.0, 2123), &request);
            self.tick(5_000);
            let response = v1_message(21, sub.access_control.1, seq, &[1, 128]);
            self.udp((sub.core_control.0, 2123), (sub.access_control.0, 2123), &response);
        }
        self.truth.sessions_down.push(sub.msisdn.clone());
    }

    pub(crate) fn subscriber(&mut self, index: u32, ue_ipv4: Ipv4Addr, apn: &'static str) -> Subscriber {
        let v2 = index % 4 == 3;
        let ue_ipv6 = (index % 5 == 1).then(|| Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, index as u16 + 1));
        let (access_control, access_user, core_control, core_user) = if v2 {
            ((SGW, self.teid()), (SGW_USER, self.teid()), (PGW, self.teid()), (PGW_USER, self.teid()))
        } else {
            ((SGSN_1, self.teid()), (SGSN_1_USER, self.teid()), (GGSN, self.teid()), (GGSN_USER, self.teid()))
        };
        let (imsi, msisdn) = (format!("00101{:010}", 1_000_000 + index), format!("4670{:08}", 10_000_000 + index));
        self.truth.identities.push((msisdn.clone(), imsi.clone()));
        Subscriber {
            imsi,
            msisdn,
            imei: format!("35{:013}", 4_200_000 + u64::from(index)),
            apn,
            ue_ipv4,
            ue_ipv6: if v2 { None } else { ue_ipv6 },
            v2,
            access_control,
            access_user,
            core_control,
            core_user,
            tcp_port: 30000 + (index % 20000) as u16,
            tcp_sequence: index.wrapping_mul(7919),
        }
    }
}
