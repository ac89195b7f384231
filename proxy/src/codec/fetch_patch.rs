//! In-place rewriting of Fetch responses (v12+, the flexible versions).
//!
//! A Fetch response is mostly record bytes; what Switchyard must change in it
//! is tiny and fixed-size: 16-byte topic ids (v13+), the session id, and the
//! preferred read replica. Decoding and re-encoding the whole response only for
//! that copied every record byte once more (11% of the proxy's CPU in a consume
//! profile). This walker finds those fields in the upstream frame and patches
//! them where they are; the records are never touched.
//!
//! KIP-951 `CurrentLeader` hints are fixed-size too and are patched to the
//! partition's virtual leader with epoch -1 (some brokers, Tansu among them,
//! send the tag even when it holds the defaults). Partition error codes are
//! fixed-size too: the caller says which to replace (epoch errors, which
//! answer Switchyard's epochs, not the client's). It refuses (returns `None`)
//! when the response carries non-empty `NodeEndpoints` (variable-size upstream
//! addresses), or when the bytes do not walk cleanly; the caller then
//! takes the decode/re-encode path, which also reports malformed data properly.
//! Nothing is patched unless the whole frame walked cleanly.

/// What the walk found: the partition error codes, for the caller's metadata
/// bookkeeping.
#[derive(Debug, Default)]
pub struct Patched {
    pub partition_errors: Vec<i16>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|s| i16::from_be_bytes([s[0], s[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|s| i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn uvarint(&mut self) -> Option<u32> {
        let mut v: u32 = 0;
        for shift in (0..35).step_by(7) {
            let byte = *self.take(1)?.first()?;
            v |= u32::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// Skips a tagged-field section; returns the tags seen.
    fn tagged_fields(&mut self, seen: &mut Vec<u32>) -> Option<()> {
        let n = self.uvarint()?;
        for _ in 0..n {
            seen.push(self.uvarint()?);
            let size = self.uvarint()? as usize;
            self.skip(size)?;
        }
        Some(())
    }
}

/// Patches a Fetch response frame (correlation id first, as read off the
/// wire) in place. `map_topic_id` turns an upstream topic id into the virtual
/// one and the topic's name (None: unknown, leave it); `virtual_leader` names
/// the virtual leader of a partition; `client_error` is the partition error
/// the client gets for an upstream one. Returns `None`, with the frame untouched,
/// when the response needs the full rewrite or does not walk cleanly.
pub fn patch_fetch_response(
    frame: &mut [u8],
    version: i16,
    map_topic_id: impl Fn(&[u8; 16]) -> Option<([u8; 16], String)>,
    virtual_leader: impl Fn(&str, i32) -> i32,
    client_error: impl Fn(i16) -> i16,
) -> Option<Patched> {
    if !(12..=17).contains(&version) {
        return None;
    }
    let mut out = Patched::default();
    let mut topic_ids: Vec<(usize, [u8; 16])> = Vec::new();
    let mut replicas: Vec<usize> = Vec::new();
    let mut leaders: Vec<(usize, i32)> = Vec::new();
    let mut errors: Vec<(usize, i16)> = Vec::new();
    let session_at;
    {
        let mut c = Cursor { b: frame, pos: 0 };
        let mut tags = Vec::new();
        c.skip(4)?; // correlation id
        c.tagged_fields(&mut tags)?; // response header v1
        c.skip(4 + 2)?; // throttle_time_ms, error_code
        session_at = c.pos;
        c.skip(4)?;
        let topics = c.uvarint()?.checked_sub(1)?;
        for _ in 0..topics {
            let name: Option<String> = if version >= 13 {
                let at = c.pos;
                let id: [u8; 16] = c.take(16)?.try_into().ok()?;
                map_topic_id(&id).map(|(v, name)| {
                    topic_ids.push((at, v));
                    name
                })
            } else {
                let len = (c.uvarint()? as usize).checked_sub(1)?;
                std::str::from_utf8(c.take(len)?).ok().map(str::to_string)
            };
            let partitions = c.uvarint()?.checked_sub(1)?;
            for _ in 0..partitions {
                let index = c.i32()?;
                let at = c.pos;
                let code = c.i16()?;
                out.partition_errors.push(code);
                let theirs = client_error(code);
                if theirs != code {
                    errors.push((at, theirs));
                }
                c.skip(8 * 3)?; // high watermark, last stable offset, log start offset
                let aborted = c.uvarint()?;
                for _ in 0..aborted.saturating_sub(1) {
                    c.skip(16)?;
                    c.tagged_fields(&mut tags)?;
                }
                let replica_at = c.pos;
                if c.i32()? >= 0 {
                    replicas.push(replica_at);
                }
                let records = c.uvarint()? as usize;
                c.skip(records.saturating_sub(1))?;
                // Partition tagged fields: 0 DivergingEpoch and 2 SnapshotId
                // carry no identity; 1 CurrentLeader names an upstream broker.
                for _ in 0..c.uvarint()? {
                    let tag = c.uvarint()?;
                    let size = c.uvarint()? as usize;
                    let at = c.pos;
                    let body = c.take(size)?;
                    if tag == 1 {
                        // leader_id i32, leader_epoch i32, empty tagged fields.
                        if size != 9 || body[8] != 0 {
                            return None;
                        }
                        let leader = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        let epoch = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                        if leader >= 0 || epoch >= 0 {
                            let name = name.as_deref()?;
                            leaders.push((at, virtual_leader(name, index)));
                        }
                    }
                }
            }
            c.tagged_fields(&mut tags)?;
        }
        // Top-level tag 0 = NodeEndpoints (v16+): upstream addresses, which
        // only a full rewrite can replace; an empty list is fine.
        for _ in 0..c.uvarint()? {
            let tag = c.uvarint()?;
            let size = c.uvarint()? as usize;
            let body = c.take(size)?;
            if tag == 0 && body != [1] {
                return None;
            }
        }
        if c.pos != frame.len() {
            return None;
        }
    }
    frame[session_at..session_at + 4].copy_from_slice(&0i32.to_be_bytes());
    for (at, id) in topic_ids {
        frame[at..at + 16].copy_from_slice(&id);
    }
    for at in replicas {
        frame[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
    }
    for (at, code) in errors {
        frame[at..at + 2].copy_from_slice(&code.to_be_bytes());
    }
    for (at, leader) in leaders {
        frame[at..at + 4].copy_from_slice(&leader.to_be_bytes());
        frame[at + 4..at + 8].copy_from_slice(&(-1i32).to_be_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::fetch_response::{
        FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, FetchResponse, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use uuid::Uuid;

    fn encode(r: &FetchResponse, version: i16) -> BytesMut {
        let mut buf = BytesMut::new();
        let mut h = ResponseHeader::default();
        h.correlation_id = 5;
        h.encode(&mut buf, ApiKey::Fetch.response_header_version(version))
            .unwrap();
        r.encode(&mut buf, version).unwrap();
        buf
    }

    fn response(leader_hint: bool) -> FetchResponse {
        let mut r = FetchResponse::default();
        r.session_id = 77;
        for t in 0..2u128 {
            let mut topic = FetchableTopicResponse::default();
            topic.topic_id = Uuid::from_u128(100 + t);
            topic.topic = TopicName(StrBytes::from_static_str("t"));
            for p in 0..3 {
                let mut pd = PartitionData::default();
                pd.partition_index = p;
                pd.high_watermark = 10;
                pd.preferred_read_replica = BrokerId(if p == 1 { 5 } else { -1 });
                pd.records = Some(Bytes::from(vec![p as u8; 50]));
                if leader_hint && p == 2 {
                    let mut cl = LeaderIdAndEpoch::default();
                    cl.leader_id = BrokerId(3);
                    cl.leader_epoch = 9;
                    pd.current_leader = cl;
                }
                topic.partitions.push(pd);
            }
            r.responses.push(topic);
        }
        r
    }

    fn decode(buf: &[u8], version: i16) -> FetchResponse {
        let mut b = Bytes::copy_from_slice(buf);
        ResponseHeader::decode(&mut b, ApiKey::Fetch.response_header_version(version)).unwrap();
        FetchResponse::decode(&mut b, version).unwrap()
    }

    fn same(code: i16) -> i16 {
        code
    }

    #[test]
    fn partition_errors_become_the_clients() {
        let mut r = response(false);
        r.responses[0].partitions[1].error_code = 74;
        r.responses[1].partitions[0].error_code = 3;
        let mut f = encode(&r, 16);
        let p = patch_fetch_response(&mut f, 16, named, |_, _| 1, |c| if c == 74 { 6 } else { c })
            .expect("walks");
        // The caller hears what the broker said; the client what it is told.
        assert_eq!(p.partition_errors, vec![0, 74, 0, 3, 0, 0]);
        let r = decode(&f, 16);
        let codes: Vec<i16> = r
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.error_code)
            .collect();
        assert_eq!(codes, vec![0, 6, 0, 3, 0, 0]);
    }

    fn named(id: &[u8; 16]) -> Option<([u8; 16], String)> {
        let v = Uuid::from_u128(Uuid::from_bytes(*id).as_u128() + 1000);
        Some((*v.as_bytes(), "t".to_string()))
    }

    #[test]
    fn patches_ids_session_and_replicas_in_place() {
        for version in 13..=17 {
            let mut f = encode(&response(false), version);
            let records_before = decode(&f, version).responses[1].partitions[2]
                .records
                .clone();
            let p =
                patch_fetch_response(&mut f, version, named, |_, p| 40 + p, same).expect("walks");
            assert_eq!(p.partition_errors, vec![0; 6]);
            let r = decode(&f, version);
            assert_eq!(r.session_id, 0);
            assert_eq!(r.responses[0].topic_id, Uuid::from_u128(1100));
            assert_eq!(r.responses[1].topic_id, Uuid::from_u128(1101));
            assert!(r
                .responses
                .iter()
                .flat_map(|t| &t.partitions)
                .all(|p| p.preferred_read_replica.0 == -1));
            assert_eq!(r.responses[1].partitions[2].records, records_before);
        }
        // v12 has names, no ids: only session and replicas change.
        let mut f = encode(&response(false), 12);
        assert!(patch_fetch_response(&mut f, 12, |_| None, |_, _| 0, same).is_some());
        assert_eq!(decode(&f, 12).session_id, 0);
    }

    #[test]
    fn leader_hints_become_virtual_leaders() {
        let mut f = encode(&response(true), 16);
        patch_fetch_response(
            &mut f,
            16,
            named,
            |name, p| {
                assert_eq!(name, "t");
                40 + p
            },
            same,
        )
        .expect("walks");
        let r = decode(&f, 16);
        let hinted = &r.responses[0].partitions[2].current_leader;
        assert_eq!((hinted.leader_id.0, hinted.leader_epoch), (42, -1));
        let plain = &r.responses[0].partitions[0].current_leader;
        assert_eq!((plain.leader_id.0, plain.leader_epoch), (-1, -1));
    }

    #[test]
    fn refuses_endpoints_and_garbage_without_touching_the_frame() {
        let leader = |_: &str, _: i32| 1;
        // A hint for a topic that cannot be named cannot be virtualised here.
        let mut f = encode(&response(true), 16);
        let before = f.clone();
        assert!(patch_fetch_response(&mut f, 16, |_| None, leader, same).is_none());
        assert_eq!(f, before);
        // Non-empty NodeEndpoints need the full rewrite.
        let mut r = response(false);
        let mut e = NodeEndpoint::default();
        e.node_id = BrokerId(3);
        e.host = StrBytes::from_static_str("upstream");
        e.port = 9092;
        r.node_endpoints.push(e);
        let mut with_ep = encode(&r, 16);
        let snapshot = with_ep.clone();
        assert!(patch_fetch_response(&mut with_ep, 16, named, leader, same).is_none());
        assert_eq!(with_ep, snapshot);
        // Truncated, trailing bytes, unsupported version.
        for cut in [3, 10, 30, before.len() - 1] {
            let mut short = before[..cut].to_vec();
            assert!(
                patch_fetch_response(&mut short, 16, named, leader, same).is_none(),
                "cut at {cut}"
            );
            assert_eq!(&short[..], &before[..cut]);
        }
        let mut trailing = before.to_vec();
        trailing.push(0);
        assert!(patch_fetch_response(&mut trailing, 16, named, leader, same).is_none());
        assert!(patch_fetch_response(&mut before.to_vec(), 11, named, leader, same).is_none());
    }
}
