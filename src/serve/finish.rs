//! A generation's final answer, or the engine's reason for giving something else: what callers
//! that need the whole answer (non-streamed requests, ensembles, calibration) await.

use mistralrs::core::{ChatCompletionResponse, CompletionResponse, Response};

use super::{Generation, ServeError};

impl Generation {
    /// The final chat response.
    pub async fn finish_chat(&mut self) -> Result<ChatCompletionResponse, ServeError> {
        match self.recv().await {
            Some(Response::Done(done)) => Ok(done),
            other => Err(failure(other)),
        }
    }

    /// The final legacy-completion response.
    pub async fn finish_completion(&mut self) -> Result<CompletionResponse, ServeError> {
        match self.recv().await {
            Some(Response::CompletionDone(done)) => Ok(done),
            other => Err(failure(other)),
        }
    }
}

/// The error for an engine answer that is not the expected result.
fn failure(response: Option<Response>) -> ServeError {
    match response {
        Some(Response::ValidationError(e)) => ServeError::Invalid(e.to_string()),
        Some(Response::ModelError(msg, _)) | Some(Response::CompletionModelError(msg, _)) => {
            ServeError::Engine(format!("model error: {msg}"))
        }
        Some(Response::InternalError(e)) => ServeError::Engine(e.to_string()),
        Some(_) => ServeError::Engine("unexpected engine response".to_owned()),
        None => ServeError::Stopped,
    }
}
