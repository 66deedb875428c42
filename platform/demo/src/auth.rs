//! The `auth` module: an HTTP API that writes users to PostgreSQL and, in
//! the same transaction, enqueues `auth.events.user.created` in the outbox.
//! A request retried with the same `Idempotency-Key` enqueues the same
//! event id (the bus drops the repeat).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use event_bus::Envelope;
use event_bus_postgres::{sqlx, Outbox};
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
}

#[derive(Deserialize)]
struct NewUser {
    email: String,
}

/// Creates the module's table.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS users (id BIGSERIAL PRIMARY KEY, email TEXT UNIQUE NOT NULL)",
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// `POST /users` (`{"email": ...}`, `Idempotency-Key` header) and `GET /users`.
pub fn router(pool: sqlx::PgPool, outbox: Outbox) -> Router {
    Router::new()
        .route("/users", post(create_user).get(list_users))
        .with_state(Auth { pool, outbox })
}

async fn create_user(
    State(auth): State<Auth>,
    headers: HeaderMap,
    Json(body): Json<NewUser>,
) -> (StatusCode, Json<serde_json::Value>) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match insert(&auth, &body.email, key.as_deref()).await {
        Ok(user_id) => (StatusCode::CREATED, Json(json!({"user_id": user_id}))),
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
    key: Option<&str>,
) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    let mut tx = auth.pool.begin().await?;
    let (user_id,): (i64,) = sqlx::query_as(
        "INSERT INTO users (email) VALUES ($1)
         ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING id",
    )
    .bind(email)
    .fetch_one(&mut *tx)
    .await?;
    let event = serde_json::to_vec(&UserCreated {
        user_id,
        email: email.to_string(),
    })?;
    let mut envelope = Envelope::new(USER_CREATED, event);
    if let Some(key) = key {
        envelope = envelope.id(format!("user-created-{key}"));
    }
    auth.outbox.enqueue(&mut tx, envelope).await?;
    auth.outbox.commit(tx).await?;
    Ok(user_id)
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
