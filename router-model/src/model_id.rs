//! One id per model across datasets, logs and configs.
//!
//! The public routing datasets spell the same model differently (`mistralai/mixtral-8x7b-chat`,
//! `Mixtral-8x7B-Instruct-v0.1`), and a user's config names models by their provider's spelling.
//! Training names checkpoint heads by this id and the gateway maps configured models onto heads
//! with it, so both must call this one function.

/// The canonical, lower-case id of a model name: provider prefix dropped, known aliases folded.
pub fn canonical_model_id(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let base = lower.rsplit('/').next().unwrap_or(&lower);
    let canonical = match base {
        "mixtral-8x7b-chat" => "mixtral-8x7b-instruct-v0.1",
        "mistral-7b-chat" => "mistral-7b-instruct-v0.1",
        "claude-instant-v1" => "claude-instant-1",
        "claude-v1" => "claude-1",
        "claude-v2" => "claude-2",
        "code-llama-instruct-34b-chat" => "codellama-34b-instruct",
        other => other,
    };
    canonical.to_owned()
}

#[cfg(test)]
mod tests {
    use super::canonical_model_id;

    #[test]
    fn aliases_and_prefixes_fold_to_one_id() {
        assert_eq!(canonical_model_id("mistralai/mixtral-8x7b-chat"), "mixtral-8x7b-instruct-v0.1");
        assert_eq!(canonical_model_id("Mixtral-8x7B-Instruct-v0.1"), "mixtral-8x7b-instruct-v0.1");
        assert_eq!(canonical_model_id(" gpt-4-1106-preview "), "gpt-4-1106-preview");
        assert_eq!(canonical_model_id("meta/llama-2-70b-chat"), "llama-2-70b-chat");
        assert_eq!(canonical_model_id("zero-one-ai/Yi-34B-Chat"), "yi-34b-chat");
        assert_eq!(canonical_model_id("anthropic/claude-v2"), "claude-2");
    }

    #[test]
    fn the_function_is_idempotent() {
        for name in ["mistralai/mixtral-8x7b-chat", "claude-instant-v1", "GPT-4o", "code-llama-instruct-34b-chat"] {
            let once = canonical_model_id(name);
            assert_eq!(canonical_model_id(&once), once, "{name}");
        }
    }
}
