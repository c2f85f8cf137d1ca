//! `GET /ui/charts/{metric}?jobs=a,b&log=true`: the dashboard's charts of one metric of one or
//! more jobs, drawn by [`crate::ui::charts`]; answers with the SVG and `X-Chart-Points` (the
//! points drawn), behind the same key as `/v1`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::fine_tuning::owned_job;
use crate::ui::charts::{keys_of, render_svg, series_of};

/// Most jobs on one chart.
const MAX_JOBS: usize = 8;

/// Query of a chart request.
#[derive(Debug, Deserialize)]
pub struct ChartQuery {
    /// Comma-separated job ids.
    jobs: String,
    /// Log-scale y axis.
    #[serde(default)]
    log: bool,
}

/// `GET /ui/charts/{metric}`.
pub async fn chart(
    state: web::Data<ApiState>,
    caller: Caller,
    metric: web::Path<String>,
    query: web::Query<ChartQuery>,
) -> Result<HttpResponse, ApiError> {
    let metric = metric.into_inner();
    let (keys, y_label) = keys_of(&metric).ok_or_else(|| {
        ApiError::invalid(
            format!(
                "Unknown chart '{metric}': use loss, accuracy, learning_rate, tokens_per_second, \
                 reward_margins or reward_accuracy"
            ),
            Some("metric"),
        )
    })?;
    let ids: Vec<&str> = query
        .jobs
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() || ids.len() > MAX_JOBS {
        return Err(ApiError::invalid(
            format!("jobs must name 1 to {MAX_JOBS} fine-tuning jobs, comma-separated"),
            Some("jobs"),
        ));
    }
    let mut series = Vec::new();
    for raw in &ids {
        let job = owned_job(&state.store, &caller.0, raw).await?;
        let events = state.store.metrics_series(&job.id).await?;
        let prefix = (ids.len() > 1).then(|| {
            job.suffix
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| job.id.as_str().to_owned())
        });
        series.extend(series_of(&events, keys, prefix.as_deref()));
    }
    let svg = render_svg(&series, y_label, query.log).map_err(|e| ApiError::internal(&e))?;
    let points: usize = series.iter().map(|s| s.points.len()).sum();
    Ok(HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header(("X-Chart-Points", points.to_string()))
        .insert_header(("Cache-Control", "no-store"))
        .body(svg))
}
