#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use ward_core::operations::OpList;
use ward_core::stage::RecordedEvent;

use super::*;
use crate::harness::{drive, Transcript};

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const STUDY_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
const STUDY_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
const IVRLE: &str = "1.2.840.10008.1.2";

fn now() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH
}

fn policy(allow: &[&str]) -> OpPolicy {
    OpPolicy {
        rule: "vendor-checks".into(),
        protocol: OpProtocol::Dicom,
        list: Some(OpList {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: Vec::new(),
        }),
    }
}

fn observe() -> OpPolicy {
    OpPolicy::observe(OpProtocol::Dicom)
}

// --- a small DICOM upper layer / DIMSE builder ------------------------------------------------

fn ae(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.resize(16, b' ');
    v
}

fn item(ty: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0];
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn pdu(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn assoc_body(calling: &str, called: &str, items: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![0, 1, 0, 0];
    b.extend(ae(called));
    b.extend(ae(calling));
    b.extend([0u8; 32]);
    b.extend(item(0x10, b"1.2.840.10008.3.1.1.1"));
    for i in items {
        b.extend_from_slice(i);
    }
    b.extend(item(0x50, &item(0x51, &16384u32.to_be_bytes())));
    b
}

fn assoc_rq(contexts: &[(u8, &str)]) -> Vec<u8> {
    let items: Vec<Vec<u8>> = contexts
        .iter()
        .map(|(id, sop)| {
            let mut d = vec![*id, 0, 0, 0];
            d.extend(item(0x30, sop.as_bytes()));
            d.extend(item(0x40, IVRLE.as_bytes()));
            item(0x20, &d)
        })
        .collect();
    pdu(0x01, &assoc_body("SCU", "DEVICE", &items))
}

fn assoc_ac(contexts: &[(u8, u8)]) -> Vec<u8> {
    let items: Vec<Vec<u8>> = contexts
        .iter()
        .map(|(id, result)| {
            let mut d = vec![*id, 0, *result, 0];
            d.extend(item(0x40, IVRLE.as_bytes()));
            item(0x21, &d)
        })
        .collect();
    pdu(0x02, &assoc_body("SCU", "DEVICE", &items))
}

/// A request command set.
fn rq(field: u16, id: u16, class: &str, instance: Option<&str>, data: bool) -> Vec<u8> {
    let set = CommandSet {
        field,
        affected_class: Some(class.into()),
        message_id: Some(id),
        affected_instance: instance.map(str::to_string),
        data_set_type: Some(if data { 0 } else { 0x0101 }),
        ..CommandSet::default()
    };
    let mut els = Vec::new();
    element(&mut els, 0x0002, &padded(class, 0));
    element(&mut els, 0x0100, &field.to_le_bytes());
    element(&mut els, 0x0110, &id.to_le_bytes());
    element(&mut els, 0x0800, &set.data_set_type.unwrap().to_le_bytes());
    if let Some(i) = instance {
        element(&mut els, 0x1000, &padded(i, 0));
    }
    let mut out = Vec::new();
    element(&mut out, 0, &(els.len() as u32).to_le_bytes());
    out.extend(els);
    out
}

/// A response command set.
fn rsp(field: u16, id: u16, class: &str, status: u16) -> Vec<u8> {
    let rqset = CommandSet {
        field,
        affected_class: Some(class.into()),
        message_id: Some(id),
        ..CommandSet::default()
    };
    let mut set = response_command(&rqset, status, "");
    // Drop the (empty) ErrorComment's effect: fine either way for tests.
    set.shrink_to_fit();
    set
}

fn pdv(pc: u8, mch: u8, frag: &[u8]) -> Vec<u8> {
    let mut v = ((frag.len() + 2) as u32).to_be_bytes().to_vec();
    v.push(pc);
    v.push(mch);
    v.extend_from_slice(frag);
    v
}

fn pdata(pdvs: &[Vec<u8>]) -> Vec<u8> {
    pdu(0x04, &pdvs.concat())
}

/// A message: its command in one PDU, its data in PDUs of one fragment of at most `frag` bytes.
fn message(pc: u8, cmd: &[u8], data: &[u8], frag: usize) -> Vec<u8> {
    let mut v = pdata(&[pdv(pc, 0x03, cmd)]);
    let n = data.chunks(frag).count();
    for (k, c) in data.chunks(frag).enumerate() {
        v.extend(pdata(&[pdv(pc, if k + 1 == n { 0x02 } else { 0x00 }, c)]));
    }
    v
}

fn release_rq() -> Vec<u8> {
    pdu(0x05, &[0, 0, 0, 0])
}

fn field<'a>(e: &'a RecordedEvent, k: &str) -> Option<&'a str> {
    e.fields
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

fn run(policy: OpPolicy, script: &[(Direction, &[u8])], step: usize) -> Transcript {
    let mut stage = DicomStage::new(policy, "pacs-1");
    drive(&mut stage, script, step, now())
}

/// Split a forwarded stream into PDUs (type, body).
fn pdus(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut v = Vec::new();
    while !b.is_empty() {
        let len = be32(&b[2..6]) as usize;
        v.push((b[0], b[6..6 + len].to_vec()));
        b = &b[6 + len..];
    }
    v
}

/// Every PDV of the P-DATA-TF PDUs of a stream: (pc, mch, fragment).
fn pdvs_of(b: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut v = Vec::new();
    for (ty, body) in pdus(b) {
        if ty != 4 {
            continue;
        }
        let mut r = &body[..];
        while !r.is_empty() {
            let len = be32(&r[..4]) as usize;
            v.push((r[4], r[5], r[6..4 + len].to_vec()));
            r = &r[4 + len..];
        }
    }
    v
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

// --- the mapping --------------------------------------------------------------------------------

#[test]
fn sop_classes_map_to_operations() {
    assert_eq!(ops_for_sop_class(VERIFICATION), ["C-ECHO"]);
    assert_eq!(ops_for_sop_class(CT), ["C-STORE", "C-GET"]);
    assert_eq!(ops_for_sop_class(STUDY_FIND), ["C-FIND"]);
    assert_eq!(ops_for_sop_class(STUDY_MOVE), ["C-MOVE"]);
    assert_eq!(ops_for_sop_class("1.2.840.10008.5.1.4.1.2.1.3"), ["C-GET"]);
    assert_eq!(ops_for_sop_class("1.2.840.10008.5.1.4.1.2.3.1"), ["C-FIND"]);
    assert_eq!(ops_for_sop_class(MODALITY_WORKLIST), ["C-FIND"]);
    assert_eq!(ops_for_sop_class(MPPS), ["N-CREATE", "N-SET"]);
    assert_eq!(ops_for_sop_class("1.2.3.4").len(), 11);
    assert_eq!(command_name(0x8001), Some("C-STORE"));
    assert_eq!(command_name(0x0FFF), Some("C-CANCEL"));
    assert_eq!(command_name(0x0042), None);
}

#[test]
fn command_sets_round_trip() {
    let set = parse_command(&rq(0x0001, 7, CT, Some("1.2.3.4"), true)).unwrap();
    assert_eq!(set.field, 1);
    assert_eq!(set.message_id, Some(7));
    assert_eq!(set.sop_class(), Some(CT));
    assert_eq!(set.sop_instance(), Some("1.2.3.4"));
    let back = parse_command(&response_command(&set, 0x0124, "Ward: no")).unwrap();
    assert_eq!(back.field, 0x8001);
    assert_eq!(back.responding_to, Some(7));
    assert_eq!(back.status, Some(0x0124));
    assert_eq!(back.sop_instance(), Some("1.2.3.4"));
    assert!(parse_command(b"\x08\x00\x16\x00\x02\x00\x00\x00ab").is_err());
    assert!(parse_command(&[]).is_err());
}

// --- observing ----------------------------------------------------------------------------------

#[test]
fn an_echo_is_decoded_and_passes_untouched() {
    let up = [
        assoc_rq(&[(1, VERIFICATION)]),
        message(1, &rq(0x0030, 1, VERIFICATION, None, false), &[], 1),
        release_rq(),
    ]
    .concat();
    let down = [
        assoc_ac(&[(1, 0)]),
        message(1, &rsp(0x0030, 1, VERIFICATION, 0), &[], 1),
        pdu(0x06, &[0, 0, 0, 0]),
    ]
    .concat();
    for policy in [observe(), policy(&["C-ECHO"])] {
        let t = run(
            policy,
            &[(Direction::Up, &up[..]), (Direction::Down, &down[..])],
            0,
        );
        assert_eq!(t.stop, None);
        assert_eq!(t.up, up);
        assert_eq!(t.down, down);
        assert_eq!(t.ops(kind::OPERATION), ["A-ASSOCIATE", "C-ECHO"]);
        assert_eq!(t.ops(kind::RESULT), ["A-ASSOCIATE", "C-ECHO"]);
        let a = t.of_kind(kind::OPERATION).next().unwrap();
        assert_eq!(field(a, "calling_ae"), Some("SCU"));
        assert_eq!(field(a, "called_ae"), Some("DEVICE"));
        assert_eq!(
            field(a, "contexts"),
            Some("1:1.2.840.10008.1.1/1.2.840.10008.1.2")
        );
        let r = t.of_kind(kind::RESULT).nth(1).unwrap();
        assert_eq!(field(r, "status"), Some("0x0000"));
        assert_eq!(field(r, "message_id"), Some("1"));
    }
}

#[test]
fn stores_are_reported_and_their_data_streams_without_a_copy() {
    let img = data(40_000);
    let up = [
        assoc_rq(&[(1, CT)]),
        message(1, &rq(0x0001, 3, CT, Some("1.2.3.9"), true), &img, 16_000),
    ]
    .concat();
    let t = run(policy(&["C-STORE"]), &[(Direction::Up, &up[..])], 0);
    assert_eq!(t.up, up);
    let ev = t.of_kind(kind::OPERATION).nth(1).unwrap();
    assert_eq!(field(ev, "op"), Some("C-STORE"));
    assert_eq!(field(ev, "sop_class"), Some(CT));
    assert_eq!(field(ev, "sop_instance"), Some("1.2.3.9"));
    assert_eq!(field(ev, "message_id"), Some("3"));
    assert_eq!(field(ev, "presentation_context"), Some("1"));

    // Chunks inside a data fragment pass as they came (the zero-copy path), policy or not.
    let mut stage = DicomStage::new(policy(&["C-STORE"]), "d");
    let mut out = Vec::new();
    let head = assoc_rq(&[(1, CT)]).len() + message(1, &rq(1, 3, CT, None, true), &[], 1).len();
    let _ = head;
    let cmd = message(1, &rq(0x0001, 3, CT, Some("1.2.3.9"), true), &[], 1);
    assert_eq!(
        stage.process(Direction::Up, &assoc_rq(&[(1, CT)]), now(), &mut out),
        Verdict::Pass
    );
    assert_eq!(
        stage.process(Direction::Up, &cmd, now(), &mut out),
        Verdict::Pass
    );
    let frag = pdata(&[pdv(1, 0x02, &img)]);
    let (a, b) = frag.split_at(100);
    out.clear();
    assert_eq!(
        stage.process(Direction::Up, a, now(), &mut out),
        Verdict::Pass,
        "the PDU header is held only until its first PDV header"
    );
    for c in b.chunks(1000) {
        out.clear();
        assert_eq!(
            stage.process(Direction::Up, c, now(), &mut out),
            Verdict::Pass
        );
    }
}

// --- enforcing: the association ----------------------------------------------------------------

#[test]
fn contexts_of_denied_operations_are_removed_from_the_request() {
    let up = assoc_rq(&[(1, VERIFICATION), (3, CT), (5, STUDY_FIND), (7, STUDY_MOVE)]);
    let t = run(
        policy(&["C-ECHO", "C-FIND"]),
        &[(Direction::Up, &up[..])],
        0,
    );
    assert_eq!(t.stop, None);
    let sent = pdus(&t.up);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, 1);
    let rq = parse_associate(&sent[0].1, 0x20).unwrap();
    let ids: Vec<u8> = rq.contexts.iter().map(|c| c.id).collect();
    assert_eq!(ids, [1, 5]);
    assert_eq!(rq.calling, "SCU");
    assert_eq!(
        rq.items.len(),
        4,
        "application context, 2 contexts, user info"
    );
    assert_eq!(t.ops(kind::DENIED), ["C-MOVE", "C-STORE"]);
    let d = t.of_kind(kind::DENIED).nth(1).unwrap();
    assert_eq!(field(d, "presentation_contexts"), Some("3"));
    assert_eq!(field(d, "sop_classes"), Some(CT));
    assert_eq!(field(d, "rule"), Some("vendor-checks"));
    assert!(
        field(d, "reason")
            .unwrap()
            .contains("allows only these dicom operations: C-ECHO, C-FIND"),
        "{d:?}"
    );
    assert!(t.replies.is_empty());

    // The device accepts what it was asked; the client hears of every context it proposed.
    let ac = assoc_ac(&[(1, 0), (5, 0)]);
    for step in [0, 1, 5] {
        let t = run(
            policy(&["C-ECHO", "C-FIND"]),
            &[(Direction::Up, &up[..]), (Direction::Down, &ac[..])],
            step,
        );
        let got = pdus(&t.down);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 2);
        let back = parse_associate(&got[0].1, 0x21).unwrap();
        let results: Vec<(u8, u8)> = back.contexts.iter().map(|c| (c.id, c.result)).collect();
        assert_eq!(results, [(1, 0), (5, 0), (3, 1), (7, 1)]);
        assert_eq!(
            got[0].1[back.items.last().unwrap().start],
            0x50,
            "user info last"
        );
    }
}

#[test]
fn an_association_with_no_allowed_context_is_rejected_by_the_gateway() {
    let up = [
        assoc_rq(&[(1, CT), (3, "1.2.840.10008.5.1.4.1.1.7")]),
        message(1, &rq(0x0001, 1, CT, Some("1.2.3"), true), &data(10), 100),
    ]
    .concat();
    let t = run(policy(&["C-ECHO"]), &[(Direction::Up, &up[..])], 0);
    assert!(t.up.is_empty(), "the device receives nothing");
    assert_eq!(t.replies, [vec![3, 0, 0, 0, 0, 4, 0, 1, 1, 1]]);
    assert_eq!(t.ops(kind::DENIED), ["C-STORE"]);
    assert_eq!(
        field(
            t.of_kind(kind::DENIED).next().unwrap(),
            "presentation_contexts"
        ),
        Some("1,3")
    );
}

#[test]
fn unknown_sop_classes_are_kept_unless_every_dimse_operation_is_denied() {
    let up = assoc_rq(&[(1, "1.2.3.4.5"), (3, VERIFICATION)]);
    let t = run(policy(&["N-ACTION"]), &[(Direction::Up, &up[..])], 0);
    let rq = parse_associate(&pdus(&t.up)[0].1, 0x20).unwrap();
    assert_eq!(rq.contexts.len(), 1);
    assert_eq!(rq.contexts[0].abstract_syntax, "1.2.3.4.5");
    let mut p = policy(&[]);
    p.list.as_mut().unwrap().deny = vec!["*".into()];
    let t = run(p, &[(Direction::Up, &up[..])], 0);
    assert!(t.up.is_empty());
    assert_eq!(t.replies.len(), 1);
}

// --- enforcing: DIMSE requests ------------------------------------------------------------------

fn refused(t: &Transcript) -> Vec<CommandSet> {
    t.replies
        .iter()
        .flat_map(|r| pdvs_of(r))
        .map(|(_, mch, f)| {
            assert_eq!(mch, 3);
            parse_command(&f).unwrap()
        })
        .collect()
}

#[test]
fn a_denied_request_that_still_arrives_is_dropped_with_its_data_and_refused() {
    let echo1 = message(1, &rq(0x0030, 1, VERIFICATION, None, false), &[], 1);
    let store = message(
        1,
        &rq(0x0001, 2, CT, Some("1.2.3.7"), true),
        &data(5000),
        1000,
    );
    let echo2 = message(1, &rq(0x0030, 3, VERIFICATION, None, false), &[], 1);
    let up = [
        assoc_rq(&[(1, VERIFICATION)]),
        echo1.clone(),
        store,
        echo2.clone(),
    ]
    .concat();
    let t = run(policy(&["C-ECHO"]), &[(Direction::Up, &up[..])], 0);
    assert_eq!(t.stop, None);
    assert_eq!(
        t.up,
        [assoc_rq(&[(1, VERIFICATION)]), echo1, echo2].concat(),
        "the store and all its data are dropped; the rest passes byte for byte"
    );
    assert_eq!(t.ops(kind::OPERATION), ["A-ASSOCIATE", "C-ECHO", "C-ECHO"]);
    assert_eq!(t.ops(kind::DENIED), ["C-STORE"]);
    let d = t.of_kind(kind::DENIED).next().unwrap();
    assert_eq!(field(d, "sop_instance"), Some("1.2.3.7"));
    let r = refused(&t);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].field, 0x8001);
    assert_eq!(r[0].responding_to, Some(2));
    assert_eq!(r[0].status, Some(0x0124));
    assert_eq!(r[0].sop_class(), Some(CT));
    assert_eq!(r[0].sop_instance(), Some("1.2.3.7"));
    assert_eq!(r[0].data_set_type, Some(0x0101));
}

#[test]
fn a_pdu_mixing_allowed_and_denied_messages_is_rewritten() {
    let echo = rq(0x0030, 1, VERIFICATION, None, false);
    let store = rq(0x0001, 2, CT, Some("1.2.3.8"), true);
    let find = rq(0x0020, 3, STUDY_FIND, None, true);
    let mixed = pdata(&[
        pdv(1, 0x03, &echo),
        pdv(1, 0x03, &store),
        pdv(1, 0x00, b"pixels-1"),
        pdv(1, 0x02, b"pixels-2"),
        pdv(3, 0x03, &find),
        pdv(3, 0x02, b"identifier"),
    ]);
    let up = [assoc_rq(&[(1, VERIFICATION), (3, STUDY_FIND)]), mixed].concat();
    let t = run(
        policy(&["C-ECHO", "C-FIND"]),
        &[(Direction::Up, &up[..])],
        0,
    );
    assert_eq!(t.stop, None);
    let got = pdvs_of(&t.up);
    assert_eq!(
        got,
        vec![(1, 3, echo), (3, 3, find), (3, 2, b"identifier".to_vec())]
    );
    // Every PDU length is right (pdus() would panic otherwise) and none exceeds the original.
    assert!(pdus(&t.up).iter().all(|(ty, b)| *ty == 1 || b.len() < 200));
    assert_eq!(t.ops(kind::DENIED), ["C-STORE"]);
    assert_eq!(refused(&t).len(), 1);
}

#[test]
fn a_command_fragmented_across_pdus_is_decided_whole() {
    let store = rq(0x0001, 2, CT, Some("1.2.3.8"), true);
    let (a, b) = store.split_at(20);
    let frag = [
        pdata(&[pdv(1, 0x01, a)]),
        pdata(&[pdv(1, 0x03, b)]),
        pdata(&[pdv(1, 0x02, b"px")]),
    ]
    .concat();
    let up = [assoc_rq(&[(1, CT)]), frag].concat();
    // Allowed: the fragments reach the device (each in a PDU of its own), then the data.
    let t = run(policy(&["C-STORE"]), &[(Direction::Up, &up[..])], 0);
    assert_eq!(
        pdvs_of(&t.up),
        vec![
            (1, 1, a.to_vec()),
            (1, 3, b.to_vec()),
            (1, 2, b"px".to_vec())
        ]
    );
    assert_eq!(t.ops(kind::OPERATION), ["A-ASSOCIATE", "C-STORE"]);
    // Denied after the association (a context for another operation): nothing of it.
    let up2 = [
        assoc_rq(&[(1, VERIFICATION)]),
        pdata(&[pdv(1, 0x01, a)]),
        pdata(&[pdv(1, 0x03, b)]),
        pdata(&[pdv(1, 0x02, b"px")]),
    ]
    .concat();
    let t = run(policy(&["C-ECHO"]), &[(Direction::Up, &up2[..])], 0);
    assert_eq!(t.up, assoc_rq(&[(1, VERIFICATION)]));
    assert_eq!(refused(&t)[0].status, Some(0x0124));
}

#[test]
fn a_denied_command_in_a_pdu_already_forwarded_ends_the_session() {
    let up = [
        assoc_rq(&[(1, CT)]),
        message(1, &rq(0x0001, 1, CT, Some("1.1"), true), &[], 1),
        pdata(&[
            pdv(1, 0x02, b"last-data"),
            pdv(1, 0x03, &rq(0x0021, 2, STUDY_MOVE, None, true)),
        ]),
    ]
    .concat();
    let t = run(policy(&["C-STORE"]), &[(Direction::Up, &up[..])], 0);
    let stop = t.stop.clone().unwrap();
    assert!(
        matches!(&stop.kind, StopKind::Denied { operation, .. } if operation == "C-MOVE"),
        "{stop}"
    );
    assert_eq!(t.ops(kind::DENIED), ["C-MOVE"]);
}

#[test]
fn a_refusal_waits_for_the_device_stream_to_reach_a_pdu_boundary() {
    let find_rsp = message(1, &rsp(0x0020, 1, STUDY_FIND, 0xFF00), &data(300), 1000);
    let (d1, d2) = find_rsp.split_at(150);
    let up = message(1, &rq(0x0001, 2, CT, Some("1.2"), true), b"x", 10);
    let t = run(
        policy(&["C-FIND"]),
        &[
            (Direction::Down, d1),
            (Direction::Up, &up[..]),
            (Direction::Down, d2),
        ],
        0,
    );
    assert!(t.up.is_empty());
    assert!(t.replies.is_empty(), "not sent in the middle of a PDU");
    assert!(t.down.starts_with(&find_rsp));
    let rest = &t.down[find_rsp.len()..];
    assert_eq!(pdvs_of(rest).len(), 1);
    assert_eq!(t.ops(kind::RESULT), ["C-FIND"]);
}

// --- not DICOM ------------------------------------------------------------------------------------

#[test]
fn bytes_that_are_not_dicom() {
    let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let t = run(observe(), &[(Direction::Up, &http[..])], 0);
    assert_eq!(t.stop, None);
    assert_eq!(t.up, http);
    assert_eq!(t.ops(kind::UNDECODABLE), Vec::<String>::new());
    let u: Vec<_> = t.of_kind(kind::UNDECODABLE).collect();
    assert_eq!(u.len(), 1);
    assert_eq!(field(u[0], "offset"), Some("0"));
    let t = run(policy(&["C-ECHO"]), &[(Direction::Up, &http[..])], 0);
    assert!(matches!(t.stop.unwrap().kind, StopKind::Unparseable(_)));
    assert!(t.up.is_empty());

    // Too large an association request: fail closed with a limit.
    let mut big = vec![1, 0];
    big.extend_from_slice(&(1u32 << 20).to_be_bytes());
    let t = run(policy(&["C-ECHO"]), &[(Direction::Up, &big[..])], 0);
    assert_eq!(
        t.stop.unwrap().kind,
        StopKind::TooLarge {
            limit: SMALL_PDU_CAP
        }
    );

    // After a good association, a broken PDV: undecodable at its offset, the rest passes.
    let rq_pdu = assoc_rq(&[(1, VERIFICATION)]);
    let bad = pdata(&[vec![0, 0, 0, 1, 1]]);
    let up = [rq_pdu.clone(), bad, b"trailing".to_vec()].concat();
    let t = run(observe(), &[(Direction::Up, &up[..])], 3);
    assert_eq!(t.up, up);
    let u = t.of_kind(kind::UNDECODABLE).next().unwrap();
    assert_eq!(field(u, "offset"), Some(&*(rq_pdu.len() + 6).to_string()));
}

// --- chunking -------------------------------------------------------------------------------------

type Script = Vec<(Direction, Vec<u8>)>;

fn scripts() -> Vec<(OpPolicy, Script)> {
    let echo = message(1, &rq(0x0030, 1, VERIFICATION, None, false), &[], 1);
    let store =
        |id, inst: &str| message(3, &rq(0x0001, id, CT, Some(inst), true), &data(3000), 700);
    let find = message(5, &rq(0x0020, 9, STUDY_FIND, None, true), b"QR-ident", 4);
    let rq_pdu = assoc_rq(&[(1, VERIFICATION), (3, CT), (5, STUDY_FIND)]);
    let ac = assoc_ac(&[(1, 0), (3, 0), (5, 0)]);
    let mixed = pdata(&[
        pdv(1, 0x03, &rq(0x0030, 4, VERIFICATION, None, false)),
        pdv(3, 0x03, &rq(0x0001, 5, CT, Some("9.9"), true)),
        pdv(3, 0x02, b"tiny"),
        pdv(5, 0x01, &rq(0x0020, 6, STUDY_FIND, None, true)[..10]),
    ]);
    let mixed_tail = pdata(&[
        pdv(5, 0x03, &rq(0x0020, 6, STUDY_FIND, None, true)[10..]),
        pdv(5, 0x02, b"id"),
    ]);
    let up = [
        rq_pdu,
        echo,
        store(2, "1.2.3.1"),
        find,
        mixed,
        mixed_tail,
        store(7, "1.2.3.2"),
        release_rq(),
    ]
    .concat();
    let down = [
        ac,
        message(1, &rsp(0x0030, 1, VERIFICATION, 0), &[], 1),
        message(3, &rsp(0x0001, 2, CT, 0), &[], 1),
        message(5, &rsp(0x0020, 9, STUDY_FIND, 0xFF00), b"match", 2),
        message(5, &rsp(0x0020, 9, STUDY_FIND, 0), &[], 1),
    ]
    .concat();
    let script = vec![(Direction::Up, up), (Direction::Down, down)];
    vec![
        (observe(), script.clone()),
        (policy(&["C-ECHO", "C-FIND"]), script.clone()),
        (policy(&["C-STORE", "C-ECHO"]), script.clone()),
        (policy(&["*"]), script.clone()),
        (policy(&["C-FIND"]), script),
    ]
}

#[test]
fn the_scripts_mean_what_they_say() {
    let s = scripts();
    let (p, script) = &s[1];
    let refs: Vec<(Direction, &[u8])> = script.iter().map(|(d, b)| (*d, &b[..])).collect();
    let t = run(p.clone(), &refs, 0);
    assert_eq!(t.stop, None);
    assert_eq!(
        t.ops(kind::OPERATION),
        ["A-ASSOCIATE", "C-ECHO", "C-FIND", "C-ECHO", "C-FIND"]
    );
    assert_eq!(
        t.ops(kind::DENIED),
        ["C-STORE", "C-STORE", "C-STORE", "C-STORE"]
    );
    let (p, script) = &s[3];
    let refs: Vec<(Direction, &[u8])> = script.iter().map(|(d, b)| (*d, &b[..])).collect();
    let t = run(p.clone(), &refs, 0);
    assert_eq!(pdvs_of(&t.up), pdvs_of(&script[0].1), "everything allowed");
    assert_eq!(t.down, script[1].1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Decoding, refusals and rewriting do not depend on how the bytes are chunked.
    #[test]
    fn decoding_is_independent_of_chunking(which in 0usize..5, step in 1usize..64) {
        let (p, script) = scripts().swap_remove(which);
        let refs: Vec<(Direction, &[u8])> = script.iter().map(|(d, b)| (*d, &b[..])).collect();
        let whole = run(p.clone(), &refs, 0);
        let chunked = run(p, &refs, step);
        prop_assert_eq!(&whole.events, &chunked.events);
        prop_assert_eq!(&whole.replies, &chunked.replies);
        prop_assert_eq!(&whole.stop, &chunked.stop);
        if whole.stop.is_none() {
            // What reaches either side is the same, byte for byte (framing included).
            prop_assert!(whole.up == chunked.up, "up differs");
            prop_assert!(whole.down == chunked.down, "down differs");
            prop_assert_eq!(whole, chunked);
        }
    }

    /// Hostile bytes after a valid association request: never a panic, and the same outcome
    /// whatever the chunking.
    #[test]
    fn hostile_bytes_are_chunking_independent(
        tail in proptest::collection::vec(any::<u8>(), 0..300),
        step in 1usize..64,
        enforce: bool,
    ) {
        let up = [assoc_rq(&[(1, VERIFICATION), (3, CT)]), tail.clone()].concat();
        let p = if enforce { policy(&["C-ECHO"]) } else { observe() };
        let refs = [(Direction::Up, &up[..]), (Direction::Down, &tail[..])];
        let whole = run(p.clone(), &refs, 0);
        let chunked = run(p, &refs, step);
        match (&whole.stop, &chunked.stop) {
            (None, None) => {
                prop_assert_eq!(&whole.events, &chunked.events);
                prop_assert_eq!(&whole.replies, &chunked.replies);
                prop_assert!(whole.up == chunked.up, "up differs");
                prop_assert!(whole.down == chunked.down, "down differs");
            }
            (Some(a), Some(b)) => prop_assert_eq!(std::mem::discriminant(&a.kind), std::mem::discriminant(&b.kind)),
            (a, b) => prop_assert!(false, "{:?} / {:?}", a, b),
        }
    }
}

#[test]
fn a_store_names_its_patient_when_the_first_fragment_has_them() {
    // Explicit VR little endian, as negotiated in the A-ASSOCIATE-AC.
    let mut ds = Vec::new();
    let ex = |ds: &mut Vec<u8>, g: u16, e: u16, vr: &[u8], v: &[u8]| {
        ds.extend_from_slice(&g.to_le_bytes());
        ds.extend_from_slice(&e.to_le_bytes());
        ds.extend_from_slice(vr);
        ds.extend_from_slice(&(v.len() as u16).to_le_bytes());
        ds.extend_from_slice(v);
    };
    ex(&mut ds, 0x0008, 0x0018, b"UI", b"1.2.3.4\0");
    ex(&mut ds, 0x0010, 0x0010, b"PN", b"Doe^Jane");
    ex(&mut ds, 0x0010, 0x0020, b"LO", b"P-0042");
    ds.extend_from_slice(&[
        0xe0, 0x7f, 0x10, 0x00, b'O', b'B', 0, 0, 4, 0, 0, 0, 1, 2, 3, 4,
    ]);
    let ac_pdu = {
        let mut d = vec![3, 0, 0, 0];
        d.extend(item(0x40, b"1.2.840.10008.1.2.1"));
        pdu(0x02, &assoc_body("SCU", "DEVICE", &[item(0x21, &d)]))
    };
    let up = [
        assoc_rq(&[(3, CT)]),
        message(3, &rq(0x0001, 5, CT, Some("1.2.3.4"), true), &ds, 20),
    ]
    .concat();
    for step in [0, 1, 7] {
        let t = run(
            policy(&["C-STORE"]),
            &[(Direction::Down, &ac_pdu[..]), (Direction::Up, &up[..])],
            step,
        );
        assert_eq!(t.up, up);
        let ev = t.of_kind(kind::OPERATION).nth(1).unwrap();
        assert_eq!(field(ev, "op"), Some("C-STORE"));
        assert_eq!(
            field(ev, "phi.patient_name"),
            None,
            "not in the first 20 bytes"
        );
        let t = run(
            policy(&["C-STORE"]),
            &[
                (Direction::Down, &ac_pdu[..]),
                (
                    Direction::Up,
                    &[
                        assoc_rq(&[(3, CT)]),
                        message(3, &rq(0x0001, 5, CT, Some("1.2.3.4"), true), &ds, 4096),
                    ]
                    .concat()[..],
                ),
            ],
            step,
        );
        let ev = t.of_kind(kind::OPERATION).nth(1).unwrap();
        assert_eq!(field(ev, "phi.patient_name"), Some("Doe^Jane"));
        assert_eq!(field(ev, "phi.patient_id"), Some("P-0042"));
        assert_eq!(field(ev, "sop_instance"), Some("1.2.3.4"));
    }
    assert_eq!(
        patient(Some(IVRLE), &ds),
        Vec::<(&str, String)>::new(),
        "read as implicit VR, the explicit data set names nobody (and does not panic)"
    );
}

#[test]
fn a_command_set_cannot_say_two_things() {
    // Without its group length (optional), then a second CommandField (C-STORE) after the first
    // (C-ECHO): refused, whatever came first.
    let mut twice = rq(0x0030, 1, VERIFICATION, None, false)[12..].to_vec();
    element(&mut twice, 0x0100, &1u16.to_le_bytes());
    assert!(parse_command(&twice).unwrap_err().contains("out of order"));
    // A group length that hides part of the set.
    let mut longer = rq(0x0030, 1, VERIFICATION, None, false);
    element(&mut longer, 0x1000, b"1.2\0");
    assert!(parse_command(&longer)
        .unwrap_err()
        .contains("CommandGroupLength"));
    let up = [
        assoc_rq(&[(1, VERIFICATION)]),
        pdata(&[pdv(1, 0x03, &twice)]),
    ]
    .concat();
    let t = run(policy(&["C-ECHO"]), &[(Direction::Up, &up[..])], 0);
    assert!(matches!(t.stop.unwrap().kind, StopKind::Unparseable(_)));
    // Two abstract syntaxes in one presentation context.
    let mut d = vec![1, 0, 0, 0];
    d.extend(item(0x30, VERIFICATION.as_bytes()));
    d.extend(item(0x30, CT.as_bytes()));
    d.extend(item(0x40, IVRLE.as_bytes()));
    let rq2 = pdu(0x01, &assoc_body("SCU", "DEVICE", &[item(0x20, &d)]));
    let t = run(policy(&["C-ECHO"]), &[(Direction::Up, &rq2[..])], 0);
    assert!(matches!(t.stop.unwrap().kind, StopKind::Unparseable(_)));
}
