//! The batch runner: claims a batch from Postgres (a lease renewed at every line), answers its
//! lines one at a time through the same code as the HTTP handlers — so interactive requests keep
//! their place in the engine's continuous batching and a batch never takes more than one slot —
//! grouped by model so adapters are not swapped back and forth, and keeps each answer as it is
//! made. A runner that dies leaves the answered lines kept; the next one to claim the batch (once
//! the lease ran out) answers only the rest. Cancelling, expiry and the output and error files
//! are handled here too.

use std::collections::HashSet;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::{HttpResponse, ResponseError, web};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::requests_of;
use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::json_body::from_value;
use crate::api::responses::input::item_id;
use crate::api::{chat, completions, responses};
use crate::domain::batch::BatchRequest;
use crate::domain::ids::FileId;
use crate::store::NewFile;
use crate::store::batches::{BatchEnd, BatchRow, BatchStage};

/// How long a claim holds a batch without a line answered.
pub const LEASE: Duration = Duration::from_secs(15);

/// Answer batches until `stop`, looking for work every `poll`.
pub async fn run_until_stopped(
    state: web::Data<ApiState>,
    stop: CancellationToken,
    poll: Duration,
) {
    let runner = format!("batch-runner-{}-{}", std::process::id(), item_id("r"));
    loop {
        if stop.is_cancelled() {
            return;
        }
        match state.store.claim_batch(&runner, LEASE).await {
            Ok(Some(batch)) => {
                let id = batch.id.clone();
                if let Err(e) = Run::new(&state, &runner, batch).go(&stop).await {
                    tracing::error!(batch = %id, error = %e, "batch run stopped");
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "claiming a batch failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// One batch being run by this runner.
struct Run<'a> {
    state: &'a web::Data<ApiState>,
    runner: &'a str,
    batch: BatchRow,
}

/// A response's status and JSON body.
fn status_and_body(response: HttpResponse) -> (u16, Value) {
    let status = response.status().as_u16();
    let bytes = response.into_body().try_into_bytes().unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

/// Answer one request as its endpoint's handler would (never streamed): its status and body.
async fn answer(
    state: &web::Data<ApiState>,
    caller: Caller,
    request: &BatchRequest,
) -> (u16, Value) {
    let mut body = request.body.clone();
    if let Value::Object(o) = &mut body {
        o.insert("stream".to_owned(), Value::Bool(false));
    }
    let answered: Result<HttpResponse, ApiError> = async {
        match request.url.as_str() {
            "/v1/chat/completions" => chat::respond(state, &caller, from_value(body)?).await,
            "/v1/completions" => completions::respond(state, &caller, from_value(body)?).await,
            _ => responses::respond(state.clone(), caller, from_value(body)?).await,
        }
    }
    .await;
    status_and_body(answered.unwrap_or_else(|e| e.error_response()))
}

impl<'a> Run<'a> {
    fn new(state: &'a web::Data<ApiState>, runner: &'a str, batch: BatchRow) -> Self {
        Self {
            state,
            runner,
            batch,
        }
    }

    async fn go(self, stop: &CancellationToken) -> anyhow::Result<()> {
        let store = &self.state.store;
        let id = self.batch.id.as_str();
        let requests = match FileId::parse(&self.batch.input_file_id) {
            Some(file) => requests_of(&self.state.blobs, &file).await,
            None => Err("the input file id is not a file id".to_owned()),
        };
        let requests = match requests {
            Ok(r) => r,
            Err(e) => {
                let errors = json!({"object": "list", "data": [{
                    "code": "invalid_input_file", "message": e, "line": null,
                    "param": "input_file_id"}]});
                store
                    .end_batch(
                        id,
                        self.runner,
                        BatchEnd::Failed,
                        (None, None),
                        Some(&errors),
                    )
                    .await?;
                return Ok(());
            }
        };
        match self.batch.status.as_str() {
            "cancelling" => return self.finish(BatchEnd::Cancelled, &requests).await,
            "finalizing" => return self.finish(BatchEnd::Completed, &requests).await,
            _ => {}
        }
        store
            .set_batch_stage(id, self.runner, BatchStage::InProgress)
            .await?;
        let done: HashSet<i32> = store
            .batch_lines(id)
            .await?
            .into_iter()
            .map(|l| l.line)
            .collect();
        let mut todo: Vec<&BatchRequest> = requests
            .iter()
            .filter(|r| !done.contains(&(r.line as i32)))
            .collect();
        // Lines of one model together: each adapter is made resident once.
        todo.sort_by(|a, b| a.model().cmp(b.model()).then(a.line.cmp(&b.line)));
        let caller = Caller(self.batch.organization_id.clone());
        for request in todo {
            if stop.is_cancelled() {
                // Shutting down: the lease runs out and a runner goes on from here.
                return Ok(());
            }
            match store.renew_batch(id, self.runner, LEASE).await? {
                None => return Ok(()),
                Some((status, _)) if status == "cancelling" => {
                    return self.finish(BatchEnd::Cancelled, &requests).await;
                }
                Some((_, true)) => return self.finish(BatchEnd::Expired, &requests).await,
                Some(_) => {}
            }
            let (status, body) = answer(self.state, caller.clone(), request).await;
            let error = (status >= 400).then(|| {
                json!({"code": body.pointer("/error/code").cloned().unwrap_or(Value::Null),
                       "message": body.pointer("/error/message").cloned().unwrap_or(Value::Null)})
            });
            let line = json!({
                "id": item_id("batch_req"), "custom_id": request.custom_id,
                "response": {"status_code": status, "request_id": item_id("req"), "body": body},
                "error": error,
            });
            store
                .insert_batch_line(id, self.runner, request.line as i32, &line, status >= 400)
                .await?;
        }
        if store
            .set_batch_stage(id, self.runner, BatchStage::Finalizing)
            .await?
        {
            self.finish(BatchEnd::Completed, &requests).await
        } else {
            // Cancelled after the last line: a later claim finishes it as cancelled.
            Ok(())
        }
    }

    /// Write the output and error files of what was answered (and, when the window closed, an
    /// `expired` error line for each request left) and end the batch as `end`.
    async fn finish(self, end: BatchEnd, requests: &[BatchRequest]) -> anyhow::Result<()> {
        let store = &self.state.store;
        let id = self.batch.id.as_str();
        let lines = store.batch_lines(id).await?;
        let mut output = String::new();
        let mut errors = String::new();
        for l in &lines {
            let text = if l.is_error { &mut errors } else { &mut output };
            text.push_str(&l.result.to_string());
            text.push('\n');
        }
        if end == BatchEnd::Expired {
            let answered: HashSet<i32> = lines.iter().map(|l| l.line).collect();
            for r in requests
                .iter()
                .filter(|r| !answered.contains(&(r.line as i32)))
            {
                let line = json!({
                    "id": item_id("batch_req"), "custom_id": r.custom_id, "response": null,
                    "error": {"code": "batch_expired", "message":
                        "This request could not be executed before the completion window expired."},
                });
                errors.push_str(&line.to_string());
                errors.push('\n');
            }
        }
        let output_id = self.write_file(&output, "output").await?;
        let error_id = self.write_file(&errors, "error").await?;
        store
            .end_batch(
                id,
                self.runner,
                end,
                (output_id.as_deref(), error_id.as_deref()),
                None,
            )
            .await?;
        Ok(())
    }

    /// Store `text` as the batch's `kind` file (`purpose: batch_output`); none when empty.
    async fn write_file(&self, text: &str, kind: &str) -> anyhow::Result<Option<String>> {
        if text.is_empty() {
            return Ok(None);
        }
        let blobs = &self.state.blobs;
        let temp = blobs.temp();
        tokio::fs::write(temp.path(), text).await?;
        let id = FileId::generate();
        blobs.commit(temp, &id).await?;
        let row = self
            .state
            .store
            .insert_file(&NewFile {
                id: id.clone(),
                organization_id: self.batch.organization_id.clone(),
                bytes: i64::try_from(text.len())?,
                filename: format!("{}_{kind}.jsonl", self.batch.id),
                purpose: "batch_output".to_owned(),
                dataset_format: None,
                example_count: None,
                expires_after_seconds: None,
            })
            .await;
        match row {
            Ok(_) => Ok(Some(id.into_string())),
            Err(e) => {
                let _ = blobs.remove(&id).await;
                Err(e.into())
            }
        }
    }
}
