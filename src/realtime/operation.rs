//! Runs one GraphQL subscription operation (juniper) as a task and reports its results as
//! transport-neutral events; WebSocket and SSE adapters frame them.

use std::rc::Rc;
use std::sync::Arc;

use futures::StreamExt;
use juniper::http::GraphQLRequest;
use serde_json::json;
use tokio::sync::mpsc;

use super::schema::{DialogEventPayload, FastSubscription, GqlContext, Plan, Schema};
use crate::dialogs::Popped;
use crate::domain::Change;

/// What an operation produced, as JSON text of the protocol's `payload`.
pub enum OpEvent {
    /// `{"data": …}` (possibly with `errors`).
    Next(String),
    /// A JSON array of GraphQL errors; the operation is over.
    Error(String),
    /// The operation's stream ended.
    Complete,
    /// The subscription is attached and its payloads are framed by the transport itself: the
    /// connection's task drains the queue (`drain`) whenever the connection's budget wakes it.
    Fast(FastSubscription),
}

/// The `next` payload that ends a subscription whose reader lost access (or whose dialog was
/// purged): an `UNAUTHORIZED` error; `complete` follows.
fn ended_payload(reason: &str) -> String {
    json!({"data": null, "errors": [{
        "message": reason,
        "extensions": {"code": "UNAUTHORIZED"},
    }]})
    .to_string()
}

/// Hands out what `fast` holds now, in order: `Some(payload)` per change (and, once the
/// subscription has ended, its error payload), then `None` for its `complete`. True when it has
/// ended.
pub fn drain(
    fast: &FastSubscription,
    latency: Option<&prometheus::Histogram>,
    mut emit: impl FnMut(Option<&str>),
) -> bool {
    loop {
        match fast.queue.try_pop() {
            Popped::Change(change, resync) => {
                if let Some(h) = latency {
                    let elapsed = chrono::Utc::now() - change.at;
                    h.observe(elapsed.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
                }
                let payload = encoded(&fast.plan, &change, resync);
                emit(Some(&payload));
            }
            Popped::Empty => return false,
            Popped::Ended => {
                let reason = fast.queue.ended().unwrap_or("the subscription has ended");
                emit(Some(&ended_payload(reason)));
                emit(None);
                return true;
            }
        }
    }
}

/// The last payload encoded on this thread: its plan, change and resync flag, and the text. Held
/// (not compared by address alone), so neither can be freed and its address reused meanwhile.
type LastEncoded = (Arc<Plan>, Arc<Change>, bool, Rc<str>);

thread_local! {
    static LAST: std::cell::RefCell<Option<LastEncoded>> = const { std::cell::RefCell::new(None) };
}

/// The payload of `change` for `plan`, encoded once per (change, plan) on this thread: a worker's
/// hub writes one change to its many subscribers one after the other, and they mostly share a
/// plan (`Plan::shared`).
fn encoded(plan: &Arc<Plan>, change: &Arc<Change>, resync: bool) -> Rc<str> {
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((p, c, r, text)) = last.as_ref()
            && Arc::ptr_eq(p, plan)
            && Arc::ptr_eq(c, change)
            && *r == resync
        {
            return text.clone();
        }
        let text: Rc<str> = plan.encode(&DialogEventPayload::of(change, resync)).into();
        *last = Some((plan.clone(), change.clone(), resync, text.clone()));
        text
    })
}

/// An operation's result tagged with its operation id, for the connection's writer. Boxed: a
/// channel allocates a block of 32 slots when it is made, and with a pointer-sized slot that block
/// is 0.3 KiB per connection instead of 3.6 KiB.
pub type OpResult = Box<(String, OpEvent)>;

/// Operation results for the connection's writer.
pub type OpSender = mpsc::Sender<OpResult>;

/// Sends one result; false when the connection is gone.
async fn report(out: &OpSender, id: String, event: OpEvent) -> bool {
    out.send(Box::new((id, event))).await.is_ok()
}

/// Starts `request` as a local task; it ends by itself on error or completion, or when aborted
/// (the client completed/stopped the operation, or the connection ended).
pub fn spawn(
    schema: Arc<Schema>,
    ctx: GqlContext,
    request: GraphQLRequest,
    id: String,
    out: OpSender,
) -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let slot: super::schema::FastSlot = Default::default();
        let mut ctx = ctx;
        ctx.fast = Some(slot.clone());
        let resolved = juniper::http::resolve_into_stream(&request, &schema, &ctx).await;
        let (value, errors) = match resolved {
            Ok(v) => v,
            Err(e) => {
                // A `GraphQLError` serializes as the GraphQL errors array itself.
                let errors = serde_json::to_string(&e).unwrap_or_else(|_| "[]".into());
                report(&out, id, OpEvent::Error(errors)).await;
                return;
            }
        };
        if !errors.is_empty() {
            let errors = serde_json::to_string(&errors).unwrap_or_default();
            report(&out, id, OpEvent::Error(errors)).await;
            return;
        }
        let fast = slot.lock().ok().and_then(|mut s| s.take());
        if let Some(fast) = fast {
            // Juniper's part is done: its execution state goes, and so does this task; the
            // connection frames each change itself (memory per idle subscriber, one wake-up
            // per change).
            drop(value);
            report(&out, id, OpEvent::Fast(fast)).await;
            return;
        }
        // Validation admits exactly one root field per subscription operation; its value is the stream.
        let root = value.into_object().and_then(|mut fields| {
            let (name, v) = fields.iter_mut().next()?;
            match std::mem::replace(v, juniper::Value::Null) {
                juniper::Value::Scalar(stream) => Some((name.clone(), stream)),
                _ => None,
            }
        });
        let Some((name, mut stream)) = root else {
            let not_subscription =
                json!([{"message": "only subscription operations are served here"}]);
            report(&out, id, OpEvent::Error(not_subscription.to_string())).await;
            return;
        };
        while let Some(item) = stream.next().await {
            let payload = match item {
                Ok(v) => json!({ "data": { name.as_str(): v } }),
                Err(errors) => json!({ "data": null, "errors": errors }),
            };
            if !report(&out, id.clone(), OpEvent::Next(payload.to_string())).await {
                return;
            }
        }
        report(&out, id, OpEvent::Complete).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::schema::PayloadField;

    fn change(n: u64) -> Arc<Change> {
        Change::numbered(n)
    }

    #[test]
    fn a_change_is_encoded_once_per_plan_and_the_text_is_that_plans() {
        let seq = Arc::new(Plan {
            root: "dialogEvents".into(),
            fields: vec![("sequence".into(), PayloadField::Sequence)],
        });
        let both = Arc::new(Plan {
            root: "e".into(),
            fields: vec![
                ("sequence".into(), PayloadField::Sequence),
                ("resync".into(), PayloadField::Resync),
            ],
        });
        let (one, two) = (change(1), change(2));
        let a = encoded(&seq, &one, false);
        assert_eq!(&*a, r#"{"data":{"dialogEvents":{"sequence":1}}}"#);
        assert!(Rc::ptr_eq(&a, &encoded(&seq, &one, false)), "encoded once");
        assert_eq!(
            &*encoded(&seq, &two, false),
            r#"{"data":{"dialogEvents":{"sequence":2}}}"#
        );
        assert_eq!(
            &*encoded(&both, &two, true),
            r#"{"data":{"e":{"sequence":2,"resync":true}}}"#
        );
        assert_eq!(
            &*encoded(&both, &two, false),
            r#"{"data":{"e":{"sequence":2,"resync":false}}}"#
        );
    }
}
