//! The `auth` module: an HTTP API that writes users to PostgreSQL and, in
//! the same transaction, enqueues `auth.events.user.created` in the outbox.
//!
//! Message ids come from what the transaction created: each user row has a
//! random `uid`, and its event's id is `auth.user.created:<uid>`: scoped by
//! the module and the event type, unique per user across databases, tenants
//! and runs (an id reused within the bus's duplicate window would be
//! dropped as a duplicate). A request that re-posts an existing e-mail
//! (a client retrying after a lost answer, or another client) creates
//! nothing and enqueues nothing: it gets the existing user with 200.
//! An event its contract refuses is refused here, with 422, before the
//! transaction commits, not later by the relay.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use event_bus::Envelope;
use event_bus_postgres::{sqlx, Outbox};
use event_bus_schema::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The event this module publishes (its contract is
/// `contracts/events/auth.user.created/v1.json`).
#[derive(Serialize, Deserialize, Debug)]
pub struct UserCreated {
    /// The new user's id.
    pub user_id: i64,
    /// Their e-mail address.
    pub email: String,
}

/// The subject `UserCreated` travels on.
pub const USER_CREATED: &str = "auth.events.user.created";

#[derive(Clone)]
struct Auth {
    pool: sqlx::PgPool,
    outbox: Outbox,
    registry: Registry,
}

#[derive(Deserialize)]
struct NewUser {
    email: String,
}

/// Creates the module's table.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS users (id BIGSERIAL PRIMARY KEY, email TEXT UNIQUE NOT NULL);
         ALTER TABLE users ADD COLUMN IF NOT EXISTS uid UUID NOT NULL UNIQUE DEFAULT gen_random_uuid();",
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// `POST /users` (`{"email": ...}`) and `GET /users`.
pub fn router(pool: sqlx::PgPool, outbox: Outbox, registry: Registry) -> Router {
    Router::new()
        .route("/users", post(create_user).get(list_users))
        .with_state(Auth {
            pool,
            outbox,
            registry,
        })
}

/// What `POST /users` did.
enum Created {
    /// A new user, and its event enqueued.
    New(i64),
    /// The e-mail was already registered: nothing created, nothing enqueued.
    Existing(i64),
    /// The event's contract refused it: nothing committed.
    Refused(String),
}

async fn create_user(
    State(auth): State<Auth>,
    Json(body): Json<NewUser>,
) -> (StatusCode, Json<serde_json::Value>) {
    match insert(&auth, &body.email).await {
        Ok(Created::New(user_id)) => (StatusCode::CREATED, Json(json!({"user_id": user_id}))),
        Ok(Created::Existing(user_id)) => (StatusCode::OK, Json(json!({"user_id": user_id}))),
        Ok(Created::Refused(why)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": why})),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

/// The business transaction: the user row and its event commit together.
async fn insert(
    auth: &Auth,
    email: &str,
) -> Result<Created, Box<dyn std::error::Error + Send + Sync>> {
    let mut tx = auth.pool.begin().await?;
    let created: Option<(i64, String)> = sqlx::query_as(
        "INSERT INTO users (email) VALUES ($1) ON CONFLICT (email) DO NOTHING RETURNING id, uid::text",
    )
    .bind(email)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user_id, uid)) = created else {
        let (user_id,): (i64,) = sqlx::query_as("SELECT id FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&mut *tx)
            .await?;
        return Ok(Created::Existing(user_id));
    };
    let event = serde_json::to_vec(&UserCreated {
        user_id,
        email: email.to_string(),
    })?;
    if let Some((type_name, _)) = auth.registry.type_for_subject(USER_CREATED) {
        if let Err(refused) = auth.registry.validate(&type_name, None, &event) {
            return Ok(Created::Refused(refused.describe(USER_CREATED)));
        }
    }
    let envelope = Envelope::new(USER_CREATED, event).id(format!("auth.user.created:{uid}"));
    auth.outbox.enqueue(&mut tx, envelope).await?;
    auth.outbox.commit(tx).await?;
    Ok(Created::New(user_id))
}

async fn list_users(State(auth): State<Auth>) -> (StatusCode, Json<serde_json::Value>) {
    match sqlx::query_as::<_, (i64, String)>("SELECT id, email FROM users ORDER BY id")
        .fetch_all(&auth.pool)
        .await
    {
        Ok(rows) => (
            StatusCode::OK,
            Json(json!(rows
                .into_iter()
                .map(|(id, email)| json!({"user_id": id, "email": email}))
                .collect::<Vec<_>>())),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        ),
    }
}
