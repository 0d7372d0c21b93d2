//! The GraphQL schema (juniper): `dialogById` (same authorization and seen effect as the REST
//! details read) and the `dialogEvents` subscription, authorized by a dialog token.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use juniper::{
    EmptyMutation, Executor, FieldError, FieldResult, GraphQLEnum, GraphQLObject, RootNode,
    graphql_object, graphql_subscription, graphql_value,
};
use uuid::Uuid;

use crate::auth::{DialogTokens, Principal, Scope};
use crate::dialogs::{
    Access, Command, CommandError, ConnectionBudget, DialogRegistry, SubscriberQueue,
    SubscriptionGuard,
};
use crate::domain::{Change, Party, ReadGrant, ResourceUrn};
use crate::store::Store;

/// What resolvers of one request or connection share.
#[derive(Clone)]
pub struct GqlContext {
    pub registry: Arc<DialogRegistry>,
    pub store: Arc<dyn Store>,
    pub dialog_tokens: Arc<DialogTokens>,
    /// The caller of `POST /graphql`, verified from its bearer token.
    pub principal: Option<Principal>,
    /// The dialog token of a subscription: `Authorization` header or `connection_init` payload.
    pub dialog_token: Option<String>,
    /// Byte budget of the connection's subscription queues.
    pub budget: Option<Arc<ConnectionBudget>>,
    /// Commit-to-delivery latency of subscription payloads.
    pub fanout_latency: Option<prometheus::Histogram>,
    /// Set by a transport that can frame payloads itself: the `dialogEvents` resolver then hands
    /// over its queue and the selection plan here instead of streaming through juniper, so each
    /// change costs a queue pop and one small encode instead of a juniper execution.
    pub fast: Option<FastSlot>,
}

/// Where the resolver leaves a fast-path subscription for its transport (taken exactly once).
pub type FastSlot = Arc<std::sync::Mutex<Option<FastSubscription>>>;

/// An attached subscription the transport drains itself.
pub struct FastSubscription {
    pub queue: Arc<SubscriberQueue>,
    /// Detaches on drop: the transport keeps it for as long as the operation runs.
    pub guard: SubscriptionGuard,
    /// Shared by the subscriptions that select the same fields (`Plan::shared`).
    pub plan: Arc<Plan>,
}

/// A field of `DialogEventPayload` a subscription selected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadField {
    Id,
    Type,
    Sequence,
    Revision,
    Resync,
    Typename,
}

/// The response shape of a `dialogEvents` selection: the root key and the (key, field) pairs in
/// order, from juniper's look-ahead (aliases, fragments and `@skip`/`@include` applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub root: String,
    pub fields: Vec<(String, PayloadField)>,
}

/// Plans kept per thread for sharing: GUIs send the same few subscription documents.
const SHARED_PLANS: usize = 16;

thread_local! {
    static PLANS: std::cell::RefCell<Vec<Arc<Plan>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Plan {
    /// `plan`, or an equal one already in use on this thread (one copy for the many subscriptions
    /// that select the same fields).
    fn shared(plan: Plan) -> Arc<Plan> {
        PLANS.with(|plans| {
            let mut plans = plans.borrow_mut();
            if let Some(p) = plans.iter().find(|p| ***p == plan) {
                return p.clone();
            }
            let p = Arc::new(plan);
            if plans.len() >= SHARED_PLANS {
                plans.remove(0);
            }
            plans.push(p.clone());
            p
        })
    }

    fn from_look_ahead(executor: &Executor<'_, '_, GqlContext>) -> Option<Plan> {
        let selection = executor.look_ahead();
        let mut fields: Vec<(String, PayloadField)> = Vec::new();
        for child in selection.children().iter() {
            let field = match child.field_original_name() {
                "id" => PayloadField::Id,
                "type" => PayloadField::Type,
                "sequence" => PayloadField::Sequence,
                "revision" => PayloadField::Revision,
                "resync" => PayloadField::Resync,
                "__typename" => PayloadField::Typename,
                _ => return None,
            };
            let key = child.field_name().to_owned();
            match fields.iter().find(|(k, _)| *k == key) {
                // Merged duplicates (`id id`) answer once; a key naming two fields is invalid.
                Some((_, f)) if *f == field => {}
                Some(_) => return None,
                None => fields.push((key, field)),
            }
        }
        Some(Plan {
            root: selection.field_name().to_owned(),
            fields,
        })
    }

    /// The `payload` of a `next` message for one change: `{"data":{root:{…}}}`.
    pub fn encode(&self, p: &DialogEventPayload) -> String {
        use std::fmt::Write;
        // Keys are GraphQL names (validated), so they need no escaping.
        let mut out = String::with_capacity(48 + 40 * self.fields.len());
        let _ = write!(out, r#"{{"data":{{"{}":{{"#, self.root);
        for (i, (key, field)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, r#""{key}":"#);
            let _ = match field {
                PayloadField::Id => write!(out, r#""{}""#, p.id),
                PayloadField::Type => out.write_str(match p.kind {
                    DialogEventType::DialogUpdated => r#""DIALOG_UPDATED""#,
                    DialogEventType::DialogDeleted => r#""DIALOG_DELETED""#,
                }),
                PayloadField::Sequence => write!(out, "{}", p.sequence),
                PayloadField::Revision => match p.revision {
                    Some(r) => write!(out, r#""{r}""#),
                    None => out.write_str("null"),
                },
                PayloadField::Resync => out.write_str(if p.resync { "true" } else { "false" }),
                PayloadField::Typename => out.write_str(r#""DialogEventPayload""#),
            };
        }
        out.push_str("}}}");
        out
    }
}

impl juniper::Context for GqlContext {}

pub type Schema = RootNode<Query, EmptyMutation<GqlContext>, Subscription>;

pub fn schema() -> Schema {
    Schema::new(Query, EmptyMutation::new(), Subscription)
}

fn coded(message: &str, code: &str) -> FieldError {
    FieldError::new(message, graphql_value!({ "code": code }))
}

fn unauthorized(message: &str) -> FieldError {
    coded(message, "UNAUTHORIZED")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, GraphQLEnum)]
pub enum DialogEventType {
    DialogUpdated,
    DialogDeleted,
}

/// One committed change of the dialog.
#[derive(Clone, Debug, PartialEq, GraphQLObject)]
pub struct DialogEventPayload {
    /// Id of the change's last event.
    pub id: Uuid,
    #[graphql(name = "type")]
    pub kind: DialogEventType,
    /// `dialogsequence` of the change's last event.
    pub sequence: i32,
    /// The dialog's revision after the change (null after a purge or for changes from the log of
    /// another node).
    pub revision: Option<Uuid>,
    /// True when changes were skipped (history too short, or the client too slow): refetch the dialog.
    pub resync: bool,
}

impl DialogEventPayload {
    pub fn of(change: &Change, resync: bool) -> Self {
        DialogEventPayload {
            id: Uuid::parse_str(&change.event_id).unwrap_or_default(),
            kind: if change.deleted {
                DialogEventType::DialogDeleted
            } else {
                DialogEventType::DialogUpdated
            },
            sequence: i32::try_from(change.last).unwrap_or(i32::MAX),
            revision: change.revision,
            resync,
        }
    }
}

/// The event-relevant view of a dialog.
#[derive(Clone, Debug, GraphQLObject)]
pub struct Dialog {
    pub id: Uuid,
    pub service_resource: String,
    pub party: String,
    pub status: String,
    pub progress: Option<i32>,
    pub revision: Uuid,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    pub sequence: i32,
    /// Parties that fetched the details since the last update.
    pub seen_since_last_update: Vec<String>,
    pub dialog_token: String,
}

pub struct Query;

#[graphql_object(context = GqlContext)]
impl Query {
    /// A dialog's details; counts as the caller's view (emits `seen` on the first view).
    async fn dialog_by_id(ctx: &GqlContext, dialog_id: Uuid) -> FieldResult<Option<Dialog>> {
        let principal = ctx
            .principal
            .as_ref()
            .ok_or_else(|| unauthorized("a bearer token is required"))?;
        let party = principal
            .party
            .clone()
            .ok_or_else(|| coded("the token names no party", "FORBIDDEN"))?;
        let policy = ctx
            .store
            .policy()
            .await
            .map_err(|e| coded(&e.to_string(), "UNAVAILABLE"))?;
        let (access, viewer, actions) = if principal.has(Scope::EndUser) {
            (
                Access::EndUser {
                    party: party.clone(),
                    policy,
                },
                Some(party.clone()),
                "read",
            )
        } else if principal.has(Scope::ServiceOwner) {
            (
                Access::ServiceOwner {
                    party: party.clone(),
                    policy,
                },
                None,
                "read;write",
            )
        } else {
            return Err(coded(
                "the token lacks the scope digdir:dialogporten",
                "FORBIDDEN",
            ));
        };
        let outcome = match ctx
            .registry
            .send(dialog_id, access, Command::View { viewer })
            .await
        {
            Ok(o) => o,
            Err(CommandError::NotFound) => return Ok(None),
            Err(CommandError::Gone) => return Err(coded("the dialog is deleted", "GONE")),
            Err(CommandError::Forbidden(why)) => return Err(coded(why, "FORBIDDEN")),
            Err(e) => return Err(coded(&e.to_string(), "UNAVAILABLE")),
        };
        let Some(d) = outcome.dialog else {
            return Ok(None);
        };
        let token = ctx.dialog_tokens.issue(
            d.id,
            &d.party.urn(),
            d.service_resource.as_str(),
            &party.urn(),
            actions,
        );
        Ok(Some(Dialog {
            id: d.id,
            service_resource: d.service_resource.to_string(),
            party: d.party.urn(),
            status: serde_json::to_value(d.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            progress: d.progress.map(i32::from),
            revision: d.revision,
            created_at: d.created_at.to_rfc3339(),
            updated_at: d.updated_at.to_rfc3339(),
            deleted_at: d.deleted_at.map(|t| t.to_rfc3339()),
            sequence: i32::try_from(d.sequence).unwrap_or(i32::MAX),
            seen_since_last_update: d
                .seen_since_last_update()
                .map(|e| e.seen_by.urn())
                .collect(),
            dialog_token: token,
        }))
    }
}

type PayloadStream = Pin<Box<dyn Stream<Item = FieldResult<DialogEventPayload>> + Send>>;

pub struct Subscription;

#[graphql_subscription(context = GqlContext, scalar = juniper::DefaultScalarValue)]
impl Subscription {
    /// Every committed change of the dialog, live; with `afterSequence`, the retained changes after
    /// that sequence first.
    async fn dialog_events(
        ctx: &GqlContext,
        executor: &Executor<'_, '_, GqlContext>,
        dialog_id: Uuid,
        after_sequence: Option<i32>,
    ) -> FieldResult<PayloadStream> {
        let plan = ctx
            .fast
            .as_ref()
            .and_then(|_| Plan::from_look_ahead(executor))
            .map(Plan::shared);
        let token = ctx
            .dialog_token
            .as_deref()
            .ok_or_else(|| unauthorized("a dialog token is required"))?;
        let claims = ctx
            .dialog_tokens
            .verify(token)
            .ok_or_else(|| unauthorized("the dialog token is invalid or expired"))?;
        if claims.i != dialog_id.to_string() {
            return Err(unauthorized("the dialog token is for another dialog"));
        }
        let after = match after_sequence {
            Some(n) if n < 0 => {
                return Err(coded(
                    "afterSequence must not be negative",
                    "BAD_USER_INPUT",
                ));
            }
            Some(n) => Some(n as u64),
            None => None,
        };
        let budget = ctx
            .budget
            .clone()
            .unwrap_or_else(|| ConnectionBudget::new(usize::MAX / 2, None));
        // A transport that frames payloads itself drains the queue from its own task.
        let drained = ctx.fast.is_some() && plan.is_some();
        let queue = if drained {
            SubscriberQueue::drained(budget)
        } else {
            SubscriberQueue::new(budget)
        };
        let grant = match (
            Party::parse(&claims.c),
            Party::parse(&claims.p),
            ResourceUrn::parse(&claims.s),
        ) {
            (Ok(reader), Ok(dialog_party), Ok(resource)) => Some(ReadGrant {
                reader,
                dialog_party,
                resource,
            }),
            _ => None,
        };
        if let Some(grant) = &grant {
            // A token issued before a delegation was revoked no longer opens a stream.
            let policy = ctx
                .registry
                .policy()
                .await
                .map_err(|e| coded(&e.to_string(), "UNAVAILABLE"))?;
            if !policy.grants(grant) {
                return Err(unauthorized("access to the dialog has ended"));
            }
        }
        let guard = ctx
            .registry
            .attach(dialog_id, after, queue.clone(), grant)
            .await
            .map_err(|e| coded(&e.to_string(), "UNAVAILABLE"))?;
        if let (Some(slot), Some(plan)) = (&ctx.fast, plan)
            && let Ok(mut slot) = slot.lock()
        {
            *slot = Some(FastSubscription { queue, guard, plan });
            // The transport drains the queue itself; juniper's stream stays idle.
            return Ok(Box::pin(futures::stream::pending()));
        }
        let latency = ctx.fanout_latency.clone();
        Ok(Box::pin(futures::stream::unfold(
            (Some(queue), guard, latency),
            |(queue, guard, latency)| async move {
                let queue = queue?;
                let Some((change, resync)) = queue.pop().await else {
                    // The last item: the reason the stream ends, then nothing.
                    let reason = queue.ended().unwrap_or("the subscription has ended");
                    return Some((Err(unauthorized(reason)), (None, guard, latency)));
                };
                if let Some(h) = &latency {
                    let elapsed = chrono::Utc::now() - change.at;
                    h.observe(elapsed.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
                }
                Some((
                    Ok(DialogEventPayload::of(&change, resync)),
                    (Some(queue), guard, latency),
                ))
            },
        )))
    }
}
