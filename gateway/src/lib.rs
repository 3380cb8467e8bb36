//! switchyard: an OpenAI-compatible LLM gateway that learns where to send each request.
//!
//! The request path lives in [`chat`], wired up in [`app`]; upstream APIs in [`providers`]; the mock upstream used
//! by tests, benchmarks and the no-config demo in [`mock`].

pub mod admin;
pub mod app;
pub mod breaker;
pub mod chat;
pub mod config;
pub mod dashboard;
pub mod embeddings;
pub mod judge;
pub mod json;
pub mod error;
pub mod handlers;
pub mod ingress;
pub mod limits;
pub mod messages;
pub mod metrics;
pub mod mock;
pub mod openai;
pub mod outcome;
pub mod providers;
pub mod redis_client;
pub mod registry;
pub mod response_cache;
pub mod responses;
pub mod routing;
pub mod serving;
pub mod shutdown;
pub mod sse;
pub mod store;
pub mod tasks;
pub mod telemetry;

pub use app::Application;
pub use config::Config;
pub use error::Error;
