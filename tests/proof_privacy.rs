//! Cross-topic leakage through Merkle proofs (THREATS T24). A batch may mix
//! topics; each stored proof carries its neighbours' leaf hashes. A
//! subscriber of one topic who knows everything about a neighbour on
//! another topic except a low-entropy payload could hash every guess and
//! compare; a random salt inside every envelope's signed bytes makes the
//! leaf hash useless to guess against.

mod common;

use common::*;
use signet_proto::codec;
use signet_proto::envelope::StoredRecord;
use signet_proto::frame::{ClientFrame, ServerFrame, StartAt, Subscribe};
use signet_proto::stream::{read_frame, write_frame};
use signet_proto::{Salt, merkle};

/// The secret amount, and the range the attacker knows it is in.
const AMOUNT: u32 = 48_213;
const GUESSES: u32 = 100_000;

/// The first record stored on `topic`, read raw (proof included) by `name`.
async fn first_record(sandbox: &Sandbox, name: &str, topic: &str) -> StoredRecord {
    let reader = client(sandbox, name).await;
    let (mut send, mut recv) = within(reader.connection().open_bi()).await.unwrap();
    let subscribe = ClientFrame::Subscribe(Subscribe {
        topic: topic.into(),
        start: StartAt::Earliest,
    });
    within(write_frame(&mut send, &subscribe)).await.unwrap();
    loop {
        match within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
            .await
            .unwrap()
            .expect("a frame")
        {
            ServerFrame::Subscribed { .. } => continue,
            ServerFrame::Deliver(deliveries) => {
                return codec::decode(&deliveries[0].record).unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_of_one_topic_cannot_brute_force_a_neighbours_payload_from_the_proof() {
    let mut sandbox = start_with(
        &[
            PrincipalSpec::new("alice").publish(">"),
            PrincipalSpec::new("reader").subscribe("orders.public"),
            PrincipalSpec::new("auditor").subscribe(">"),
        ],
        "",
    )
    .await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let seq = fresh_seq();
    let public = envelope(key.id(), "orders.public", seq, b"{\"hello\":1}");
    let mut secret = envelope(
        key.id(),
        "payments.secret",
        seq + 1,
        format!("amount={AMOUNT}").as_bytes(),
    );
    secret.timestamp_ms = public.timestamp_ms;
    let batch = signed(&key, 1, vec![public, secret.clone()]);
    assert_eq!(
        common::codes::nack_codes(raw_publish(&alice, batch).await),
        vec![None, None]
    );

    // The reader sees only its topic; the proof names the neighbour's leaf.
    let record = first_record(&sandbox, "reader", "orders.public").await;
    assert_eq!(record.envelope.topic, "orders.public");
    assert_eq!((record.proof.leaf_index, record.proof.leaf_count), (0, 2));
    let sibling = record.proof.path[0];
    // Sanity: the neighbour as published does hash to that sibling.
    assert_eq!(merkle::leaf_hash(&secret.canonical_bytes()), sibling);

    // The attack: every field of the neighbour is guessable (same key,
    // next seq, same timestamp, known topic and content type) but the
    // amount; whatever the reader's record lets it copy, it copies. The
    // neighbour's salt it cannot know: it tries its own record's salt (as
    // if salts were per batch) and none at all.
    let mut guess = record.envelope.clone();
    guess.topic = "payments.secret".into();
    guess.seq = record.envelope.seq + 1;
    let salts = [record.envelope.salt, Salt([0; 16])];
    let found = (0..GUESSES).find(|n| {
        guess.payload = format!("amount={n}").into_bytes();
        salts.iter().any(|salt| {
            guess.salt = *salt;
            merkle::leaf_hash(&guess.canonical_bytes()) == sibling
        })
    });
    assert_eq!(
        found,
        None,
        "recovered amount={} from the proof after {} guesses",
        found.unwrap_or_default(),
        found.unwrap_or_default() + 1
    );
    sandbox.stop().await;
}
