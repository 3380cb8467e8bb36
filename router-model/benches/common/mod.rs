//! Inputs shared by the benches: token sequences of exact lengths cut from real text.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use router_model::{BertEmbedder, Embedder, EmbedderOptions, ModelSource, Tokens};

pub const PARAGRAPH: &str = "The history of computing is a story of abstraction layered on \
abstraction. Early machines were programmed by physically rewiring circuits; stored-program \
computers let software change behaviour without touching hardware. Assemblers replaced raw \
opcodes with mnemonics, compilers replaced assembly with structured languages, and operating \
systems hid devices behind files and processes. Each layer traded a little efficiency for a \
lot of productivity, and each was at first dismissed as too slow for serious work. Virtual \
memory, garbage collection, dynamic typing and managed runtimes all followed the same arc: a \
curiosity, then a luxury, then an assumption. Today large language models sit at the top of \
that stack, turning natural language into programs, queries and prose. Routing requests among \
such models is itself an abstraction: the caller asks for an answer of a certain quality at a \
certain price, and the gateway decides which model should produce it, how long to wait, and \
what to do when the first choice fails or is overloaded. Measuring that decision honestly \
needs real prompts, real answers and real prices, and a baseline that knows nothing at all.";

/// An embedder whose window fits the longest bench input.
pub fn embedder(max_tokens: usize) -> BertEmbedder {
    let source = ModelSource::default_dir();
    BertEmbedder::load(
        &source,
        &EmbedderOptions {
            max_tokens,
            ..EmbedderOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e} (run scripts/fetch-model.sh first)"))
}

/// `n` tokens: `[CLS]`, `n - 2` word pieces starting at `offset` into the paragraph, `[SEP]`.
pub fn tokens(e: &BertEmbedder, n: usize, offset: usize) -> Tokens {
    let long = format!("{PARAGRAPH} {PARAGRAPH}");
    let ids = e.tokenize(&long).expect("tokenize").ids().to_vec();
    let body = &ids[1..ids.len() - 1];
    let mut out = vec![101u32];
    out.extend((0..n - 2).map(|i| body[(offset + i) % body.len()]));
    out.push(102);
    Tokens::from_ids(out)
}

/// A text of roughly `n` tokens, made unique by `tag` (so caches miss).
pub fn text(words: usize, tag: usize) -> String {
    let mut s = format!("request {tag}:");
    for w in PARAGRAPH
        .split_whitespace()
        .cycle()
        .skip(tag % 50)
        .take(words)
    {
        s.push(' ');
        s.push_str(w);
    }
    s
}
