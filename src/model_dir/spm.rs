//! SentencePiece BPE from GGUF (`tokenizer.ggml.model = llama`: Llama 2, Mistral, TinyLlama):
//! pieces with scores, rebuilt as a `tokenizers` BPE that encodes as sentencepiece does.
//!
//! SentencePiece merges, again and again, the adjacent pair whose joined piece scores highest.
//! A BPE whose merges are every split of every piece into two pieces, ranked by the joined
//! piece's score, does the same. Characters without a piece fall back to `<0xXX>` byte pieces;
//! spaces become `▁`, with one in front of the text unless `tokenizer.ggml.add_space_prefix` is
//! false.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, NormalizerWrapper, Tokenizer};

use super::gguf::{GgufError, Meta};

/// Token type of an ordinary piece.
const NORMAL: i32 = 1;

/// The `tokenizers` form of a SentencePiece BPE vocabulary.
pub(super) fn sentencepiece_bpe(
    meta: &Meta,
    tokens: &[String],
    types: &[i32],
) -> Result<Tokenizer, GgufError> {
    let scores: Vec<f32> = meta
        .get("tokenizer.ggml.scores")?
        .to_vec()
        .map_err(|_| GgufError::Unsupported("'tokenizer.ggml.scores' is not a list".into()))?
        .iter()
        .map(|v| v.to_f32().unwrap_or(0.0))
        .collect();
    if scores.len() != tokens.len() {
        return Err(GgufError::Unsupported(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let unk = meta
        .get("tokenizer.ggml.unknown_token_id")
        .ok()
        .and_then(|v| v.to_u32().ok())
        .and_then(|id| tokens.get(id as usize))
        .cloned()
        .unwrap_or_else(|| "<unk>".to_owned());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.clone(), merges(tokens, &scores, types, &vocab))
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| {
            GgufError::Unsupported(format!("building the SentencePiece tokenizer: {e}"))
        })?;
    let mut tok = Tokenizer::new(bpe);
    let prefix = meta
        .get("tokenizer.ggml.add_space_prefix")
        .ok()
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| GgufError::Unsupported(format!("tokenizer: {e}")))
    };
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if prefix {
        normalizers.push(Prepend::new("▁".to_owned()).into());
    }
    normalizers.push(replace(" ", "▁")?.into());
    tok.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let mut decoders: Vec<DecoderWrapper> = vec![
        replace("▁", " ")?.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

/// Every split of an ordinary piece into two pieces, best joined score first (ties: the joined
/// piece's id, then the shorter left part).
fn merges(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
    vocab: &Vocab,
) -> Vec<(String, String)> {
    let normal = |id: usize| types.get(id).copied().unwrap_or(NORMAL) == NORMAL;
    let mut found: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate().filter(|(id, _)| normal(*id)) {
        for (cut, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(cut);
            let parts = (vocab.get(left), vocab.get(right));
            if let (Some(l), Some(r)) = parts
                && normal(*l as usize)
                && normal(*r as usize)
            {
                found.push((scores[id], id, left.len(), left, right));
            }
        }
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    found
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_owned(), r.to_owned()))
        .collect()
}
