//! The route table: each handler carries its path and method once (actix's route macro) and its
//! OpenAPI entry (utoipa), and is registered here once; `utoipa-actix-web` collects the spec from
//! the same registration. A request whose path exists but whose method does not is answered
//! 405 with `Allow`, computed from that spec.

use std::sync::OnceLock;

use actix_web::http::header::ALLOW;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::ApiError;
use super::rejections;
use super::{
    batches, chat, completions, ensembles, files, fine_tuning, health, metrics, models, openapi,
    responses,
};

/// Register every documented route and the error envelopes for actix's own rejections.
pub fn configure(cfg: &mut ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(rejections::query_rejection))
        .app_data(web::PathConfig::default().error_handler(rejections::path_rejection))
        .service(health::health)
        .service(metrics::metrics)
        .service(files::list_files)
        .service(files::upload::create_file)
        .service(files::retrieve_file)
        .service(files::delete_file)
        .service(files::download_file)
        .service(fine_tuning::jobs::list_paginated_fine_tuning_jobs)
        .service(fine_tuning::jobs::create_fine_tuning_job)
        .service(fine_tuning::jobs::retrieve_fine_tuning_job)
        .service(fine_tuning::actions::cancel_fine_tuning_job)
        .service(fine_tuning::actions::pause_fine_tuning_job)
        .service(fine_tuning::actions::resume_fine_tuning_job)
        .service(fine_tuning::events::list_fine_tuning_events)
        .service(fine_tuning::events::list_fine_tuning_job_checkpoints)
        .service(chat::create_chat_completion)
        .service(completions::create_completion)
        .service(responses::create_response)
        .service(responses::list_input_items)
        .service(responses::get_response)
        .service(responses::delete_response)
        .service(batches::create_batch)
        .service(batches::list_batches)
        .service(batches::retrieve_batch)
        .service(batches::cancel_batch)
        .service(ensembles::create_ensemble)
        .service(ensembles::list_ensembles)
        .service(ensembles::retrieve_ensemble)
        .service(ensembles::delete_ensemble)
        .service(models::list_models)
        .service(models::adapters::load_lora_adapter)
        .service(models::adapters::unload_lora_adapter)
        .service(models::export::export_model)
        .service(models::retrieve_model)
        .service(models::delete_model);
}

/// The app with every route: the documented ones, `/openapi.json`, and the answer for
/// everything else.
pub fn app() -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .into_utoipa_app()
        .configure(configure)
        .into_app()
        .route("/openapi.json", web::get().to(openapi::serve_openapi))
        .route("/ui/charts/{metric}", web::get().to(super::charts::chart))
        .configure(crate::ui::configure)
        .default_service(web::to(unmatched))
}

/// The OpenAPI document of [`configure`]'s routes, built once.
pub fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    SPEC.get_or_init(|| {
        actix_web::App::new()
            .into_utoipa_app()
            .openapi(openapi::ApiDoc::openapi())
            .configure(configure)
            .split_for_parts()
            .1
    })
}

/// 405 with `Allow` when the path is one of ours, else 404; both in OpenAI's envelope.
async fn unmatched(req: HttpRequest) -> HttpResponse {
    let path = req.path();
    let matching: Vec<_> = spec()
        .paths
        .paths
        .iter()
        .filter(|(template, _)| path_matches(template, path))
        .collect();
    // A template that fits segment for segment wins over one whose tail parameter swallows the
    // rest (`/v1/models/{model}/export` over `/v1/models/{model}`).
    let segments = |p: &str| p.trim_matches('/').split('/').count();
    let exact: Vec<_> = matching
        .iter()
        .filter(|(template, _)| segments(template) == segments(path))
        .copied()
        .collect();
    let chosen = if exact.is_empty() { matching } else { exact };
    let mut allowed: Vec<String> = Vec::new();
    for method in chosen.into_iter().flat_map(|(_, item)| methods_of(item)) {
        if !allowed.contains(&method) {
            allowed.push(method);
        }
    }
    if allowed.is_empty() {
        return ApiError::for_status(actix_web::http::StatusCode::NOT_FOUND, &req).error_response();
    }
    let mut res = ApiError::for_status(actix_web::http::StatusCode::METHOD_NOT_ALLOWED, &req)
        .error_response();
    if let Ok(value) = allowed.join(", ").parse() {
        res.headers_mut().insert(ALLOW, value);
    }
    res
}

/// Path parameters whose values may hold slashes (their routes use `{model:.*}`).
const TAIL_PARAMS: [&str; 1] = ["{model}"];

/// Whether `path` fits an OpenAPI path `template`: a `{param}` matches one segment, a trailing
/// [`TAIL_PARAMS`] one the rest of the path.
fn path_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is_param = |s: &str| s.starts_with('{') && s.ends_with('}');
    let tail = t.last().is_some_and(|s| TAIL_PARAMS.contains(s));
    if p.len() < t.len() || (p.len() > t.len() && !tail) {
        return false;
    }
    t.iter().zip(&p).all(|(ts, ps)| {
        if is_param(ts) {
            !ps.is_empty()
        } else {
            ts == ps
        }
    })
}

fn methods_of(item: &utoipa::openapi::PathItem) -> Vec<String> {
    let ops = [
        ("GET", &item.get),
        ("POST", &item.post),
        ("PUT", &item.put),
        ("PATCH", &item.patch),
        ("DELETE", &item.delete),
    ];
    ops.into_iter()
        .filter(|(_, op)| op.is_some())
        .map(|(m, _)| m.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_their_paths_and_a_last_parameter_takes_the_rest() {
        assert!(path_matches("/v1/files/{file_id}", "/v1/files/file-abc"));
        assert!(!path_matches("/v1/files/{file_id}", "/v1/files"));
        assert!(!path_matches(
            "/v1/files/{file_id}",
            "/v1/files/a/content/x"
        ));
        assert!(path_matches("/v1/models/{model}", "/v1/models/org/name:x"));
        assert!(!path_matches("/v1/files", "/v1/models"));
    }

    #[test]
    fn every_route_is_in_the_spec_with_its_operation_id() {
        let spec = spec();
        let jobs = &spec.paths.paths["/v1/fine_tuning/jobs"];
        assert_eq!(methods_of(jobs), vec!["GET", "POST"]);
        assert!(spec.paths.paths.contains_key("/v1/models/{model}"));
        assert!(spec.paths.paths.contains_key("/v1/models/{model}/export"));
        assert!(spec.paths.paths.contains_key("/v1/completions"));
        assert!(spec.paths.paths.contains_key("/v1/ensembles"));
        assert!(spec.paths.paths.contains_key("/v1/ensembles/{ensemble}"));
        let responses = &spec.paths.paths["/v1/responses/{id}"];
        assert_eq!(methods_of(responses), vec!["GET", "DELETE"]);
        assert!(
            spec.paths
                .paths
                .contains_key("/v1/responses/{id}/input_items")
        );
        assert_eq!(
            methods_of(&spec.paths.paths["/v1/batches"]),
            vec!["GET", "POST"]
        );
        assert!(
            spec.paths
                .paths
                .contains_key("/v1/batches/{batch_id}/cancel")
        );
        assert_eq!(spec.paths.paths.len(), 27);
    }
}
