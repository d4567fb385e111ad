//! The NATS side of a cluster member, on its own thread (a tokio runtime): the stream, the publishing
//! of what the probe sends, and the following of what the stream holds.
use super::{stream_name, subject_prefix, ClusterConfig, Message, SUBJECT_HISTORY};
use std::time::Duration;

/// The NATS side: connect, stream, then publish what the probe sends and deliver what the stream has.
/// Publishing retries until the server has stored the message (a restarted server loses nothing the
/// probe queued). Ends when the probe drops its sender and the queue is published.
pub(super) async fn run(
    config: ClusterConfig,
    mut to_publish: tokio::sync::mpsc::UnboundedReceiver<Message>,
    deliver: crossbeam_channel::Sender<(u64, Message, u64)>,
    ready: crossbeam_channel::Sender<Result<u64, String>>,
) {
    use async_nats::jetstream;
    use futures_util::StreamExt;
    let setup = async {
        let client = async_nats::ConnectOptions::new()
            .name(format!("gtpcharge probe {}", config.probe_id))
            .retry_on_initial_connect()
            .connect(config.url.trim_start_matches("nats://"))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let js = jetstream::new(client);
        // Created, or brought to this configuration (a stream of an earlier version kept every message
        // under one subject).
        js.create_or_update_stream(jetstream::stream::Config {
            name: stream_name(&config.name),
            subjects: vec![format!("{}.>", subject_prefix(&config.name))],
            max_age: Duration::from_secs(7 * 86_400),
            max_messages_per_subject: SUBJECT_HISTORY,
            duplicate_window: Duration::from_secs(120),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("the stream {}: {e}", stream_name(&config.name)))?;
        let mut stream = js
            .get_stream(stream_name(&config.name))
            .await
            .map_err(|e| format!("the stream {}: {e}", stream_name(&config.name)))?;
        let last = stream.info().await.map_err(|e| format!("the stream's state: {e}"))?.state.last_sequence;
        Ok::<_, String>((js, stream, last))
    };
    let (js, stream, last) = match setup.await {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(last));
    let prefix = subject_prefix(&config.name);
    // Follows the stream from its start; after an error (a restarted server forgets the consumer), again
    // from the message after the last one read.
    let reader = tokio::spawn(async move {
        let mut next = 1u64;
        loop {
            let policy = if next <= 1 {
                jetstream::consumer::DeliverPolicy::All
            } else {
                jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: next }
            };
            let config = jetstream::consumer::pull::OrderedConfig { deliver_policy: policy, ..Default::default() };
            let messages = match stream.create_consumer(config).await {
                Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "following the cluster stream; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "reading the cluster stream; following it again");
                        break;
                    }
                };
                let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(next);
                next = sequence + 1;
                match serde_json::from_slice::<Message>(&message.payload) {
                    Ok(parsed) => {
                        let received_us = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_micros() as u64);
                        if deliver.send((sequence, parsed, received_us)).is_err() {
                            return;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "a cluster message this probe does not read"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Published in batches of what is queued (at most 256), every acknowledgement of a batch awaited
    // together: one connection keeps them in order. A batch with any failure is published again whole,
    // in order (the ids make what was stored already a duplicate the server drops), so no progress
    // message is ever stored before a change it covers.
    while let Some(first) = to_publish.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match to_publish.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let encoded: Vec<(String, String, Vec<u8>)> =
            batch.iter().filter_map(|m| Some((m.subject(&prefix), m.id(), serde_json::to_vec(m).ok()?))).collect();
        let mut delay = Duration::from_millis(100);
        loop {
            let mut acks = Vec::with_capacity(encoded.len());
            let mut failed = None;
            for (subject, id, payload) in &encoded {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                match js.publish_with_headers(subject.clone(), headers, payload.clone().into()).await {
                    Ok(ack) => acks.push(ack),
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            for ack in acks {
                if let Err(e) = ack.await {
                    failed.get_or_insert(e.to_string());
                }
            }
            match failed {
                None => break,
                Some(error) => {
                    tracing::warn!(%error, messages = encoded.len(), "publishing session changes failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    reader.abort();
}
