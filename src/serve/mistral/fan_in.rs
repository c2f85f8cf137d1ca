//! `n` choices as `n` engine requests of one choice each, merged back into one channel.
//!
//! mistral.rs 0.8.1 reports a request's usage from its last sequence only (`total_toks` is set,
//! not summed, per sequence), so with `n_choices > 1` the completion tokens of all but one
//! choice go uncounted. One request per choice gives each choice its exact count; the engine
//! still batches them together. Dropping the merged receiver ends this task, which drops the
//! per-choice receivers and so cancels every choice.

use futures_util::StreamExt;
use mistralrs::core::{ChatCompletionResponse, CompletionResponse, Response, Usage};
use tokio::sync::mpsc;

/// Adds a choice's counts to `total`; the prompt is counted once, as OpenAI does.
fn add(total: &mut Usage, u: &Usage) {
    total.completion_tokens += u.completion_tokens;
    total.total_tokens = total.prompt_tokens + total.completion_tokens;
}

/// A finished response whose one choice is merged with the others'.
trait Whole: Sized {
    fn reindex(&mut self, i: usize);
    fn absorb(&mut self, other: Self);
}

/// Both finished-response types hold `choices` (each with an `index`) and a `usage`.
macro_rules! whole {
    ($t:ty) => {
        impl Whole for $t {
            fn reindex(&mut self, i: usize) {
                self.choices.iter_mut().for_each(|c| c.index = i);
            }
            fn absorb(&mut self, other: Self) {
                add(&mut self.usage, &other.usage);
                self.choices.extend(other.choices);
                self.choices.sort_by_key(|c| c.index);
            }
        }
    };
}

whole!(ChatCompletionResponse);
whole!(CompletionResponse);

/// Keep choice `i`'s result; all `n` in, the merged response.
fn gather<T: Whole>(parts: &mut Vec<T>, mut part: T, i: usize, n: usize) -> Option<T> {
    part.reindex(i);
    parts.push(part);
    if parts.len() < n {
        return None;
    }
    let mut all = std::mem::take(parts).into_iter();
    let mut first = all.next()?;
    all.for_each(|p| first.absorb(p));
    Some(first)
}

#[derive(Default)]
struct Merge {
    chats: Vec<ChatCompletionResponse>,
    completions: Vec<CompletionResponse>,
    usage: Option<Usage>,
    usages: usize,
}

/// Forward `subs` (choice i on `subs[i]`) into `tx` as one request's responses.
pub async fn fan_in(subs: Vec<mpsc::Receiver<Response>>, tx: mpsc::Sender<Response>) {
    let n = subs.len();
    let mut merged =
        futures_util::stream::select_all(subs.into_iter().enumerate().map(|(i, rx)| {
            futures_util::stream::unfold(rx, move |mut rx| async move {
                let r = rx.recv().await?;
                Some(((i, r), rx))
            })
            .boxed()
        }));
    let mut m = Merge::default();
    while let Some((i, response)) = merged.next().await {
        let out = match response {
            Response::Chunk(mut c) => {
                c.choices.iter_mut().for_each(|ch| ch.index = i);
                if let Some(u) = c.usage.take() {
                    match &mut m.usage {
                        Some(total) => add(total, &u),
                        None => m.usage = Some(u),
                    }
                    m.usages += 1;
                }
                let last = (m.usages == n).then(|| {
                    let mut end = c.clone();
                    end.choices.clear();
                    end.usage = m.usage.take();
                    end
                });
                if !c.choices.is_empty() && tx.send(Response::Chunk(c)).await.is_err() {
                    return;
                }
                match last {
                    Some(end) => Response::Chunk(end),
                    None => continue,
                }
            }
            Response::CompletionChunk(mut c) => {
                c.choices.iter_mut().for_each(|ch| ch.index = i);
                Response::CompletionChunk(c)
            }
            Response::Done(d) => match gather(&mut m.chats, d, i, n) {
                Some(all) => Response::Done(all),
                None => continue,
            },
            Response::CompletionDone(d) => match gather(&mut m.completions, d, i, n) {
                Some(all) => Response::CompletionDone(all),
                None => continue,
            },
            // Errors end the whole request.
            other => {
                let _ = tx.send(other).await;
                return;
            }
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}
