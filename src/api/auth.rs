//! Bearer API keys. With keys configured every `/v1` route needs one, and each key is its own
//! organization; without keys the server is open and everyone is the local organization.

use std::collections::HashMap;
use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use sha2::{Digest, Sha256};

use super::ApiState;
use super::error::ApiError;
use crate::domain::organization::OrganizationId;

/// Who may call the API.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No keys: every caller is the local organization.
    Open,
    /// Keys, stored as digests so lookups do not compare secrets byte by byte.
    Keys(HashMap<[u8; 32], OrganizationId>),
}

impl Auth {
    /// Build from the configured keys (empty → open).
    pub fn from_keys(keys: &[String]) -> Self {
        if keys.is_empty() {
            return Self::Open;
        }
        Self::Keys(
            keys.iter()
                .map(|k| (digest(k), OrganizationId::for_api_key(k)))
                .collect(),
        )
    }

    /// The organization a request acts for.
    pub fn organization(&self, req: &HttpRequest) -> Result<OrganizationId, ApiError> {
        let Self::Keys(keys) = self else {
            return Ok(OrganizationId::local());
        };
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                )
            })?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .unwrap_or_default();
        keys.get(&digest(key))
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Extractor: the caller's organization (401 when a key is required and missing or wrong).
#[derive(Debug, Clone)]
pub struct Caller(pub OrganizationId);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<ApiState>>();
        ready(match state {
            Some(state) => state.auth.organization(req).map(Caller),
            None => Err(ApiError::internal("ApiState missing from app data")),
        })
    }
}
