//! The dashboard at `/ui`: HTML pages rendered with `minijinja` from templates compiled into the
//! binary, one script and one stylesheet of our own, and server-drawn charts ([`charts`]). The
//! pages hold no data: the script reads and writes everything through the public `/v1` API with
//! the key the user enters (kept in the browser's local storage), so a page shows exactly what
//! that key's organization may see.

pub mod charts;

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use minijinja::{Environment, context};

/// Every page: its path under `/ui`, template and title.
const PAGES: [(&str, &str, &str); 7] = [
    ("jobs", "jobs.html", "Fine-tuning jobs"),
    ("job", "job.html", "Job"),
    ("compare", "compare.html", "Compare runs"),
    ("files", "files.html", "Files"),
    ("models", "models.html", "Models"),
    ("batches", "batches.html", "Batches"),
    ("playground", "playground.html", "Playground"),
];

const TEMPLATES: [(&str, &str); 8] = [
    ("base.html", include_str!("templates/base.html")),
    ("jobs.html", include_str!("templates/jobs.html")),
    ("job.html", include_str!("templates/job.html")),
    ("compare.html", include_str!("templates/compare.html")),
    ("files.html", include_str!("templates/files.html")),
    ("models.html", include_str!("templates/models.html")),
    ("batches.html", include_str!("templates/batches.html")),
    ("playground.html", include_str!("templates/playground.html")),
];

const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "a dashboard template does not parse");
            }
        }
        env
    })
}

/// The HTML of page `name` (`None`: no such page).
pub fn render_page(name: &str) -> Option<Result<String, minijinja::Error>> {
    let (page, template, title) = PAGES.iter().find(|(p, _, _)| *p == name)?;
    let nav: Vec<_> = PAGES
        .iter()
        .filter(|(p, _, _)| !matches!(*p, "job"))
        .map(|(p, _, t)| context! { path => p, title => t })
        .collect();
    Some(environment().get_template(template).and_then(|t| {
        t.render(context! { page, title, nav, version => env!("CARGO_PKG_VERSION") })
    }))
}

async fn page(name: web::Path<String>) -> HttpResponse {
    respond(&name)
}

async fn index() -> HttpResponse {
    respond("jobs")
}

fn respond(name: &str) -> HttpResponse {
    match render_page(name) {
        Some(Ok(html)) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(html),
        Some(Err(e)) => {
            tracing::error!(page = name, error = %e, "rendering a dashboard page failed");
            HttpResponse::InternalServerError().body("the page could not be rendered")
        }
        None => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body(format!("no dashboard page '{name}'")),
    }
}

async fn asset(name: web::Path<String>) -> HttpResponse {
    let (body, kind) = match name.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok()
        .content_type(kind)
        .insert_header(("Cache-Control", "no-cache"))
        .body(body)
}

/// Register the dashboard's routes (not part of the OpenAPI document: pages, not API).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ui", web::get().to(index))
        .route("/ui/", web::get().to(index))
        .route("/ui/static/{name}", web::get().to(asset))
        .route("/ui/{page}", web::get().to(page));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_with_the_navigation_and_the_script() {
        for (name, _, title) in PAGES {
            let html = render_page(name).unwrap().unwrap();
            assert!(html.contains(&format!("<title>{title}")), "{name}");
            assert!(html.contains("/ui/static/app.js"), "{name}");
            assert!(html.contains(&format!("data-page=\"{name}\"")), "{name}");
            assert!(html.contains("href=\"/ui/files\""), "{name}");
        }
        assert!(render_page("nope").is_none());
    }
}
