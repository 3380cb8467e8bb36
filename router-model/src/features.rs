//! Cheap request features that the embedding does not capture: how long the conversation is,
//! whether it carries code or tools, and how much output the caller allows.

use serde::{Deserialize, Serialize};

/// One message of a chat request, as plain data (the gateway maps its OpenAI types here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTurn<'a> {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: &'a str,
    /// The text content (concatenate text parts of multi-part content).
    pub content: &'a str,
}

/// Request features fed to the selector beside the embedding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestFeatures {
    /// Prompt tokens (all messages); exact if the caller counted them, else estimated.
    pub prompt_tokens: u32,
    /// User turns in the conversation (1 for a single question).
    pub turns: u32,
    /// Whether the prompt contains code (fences or code-like lines).
    pub has_code: bool,
    /// Whether the request offers tools / functions.
    pub has_tools: bool,
    /// The caller's `max_tokens` (or `max_completion_tokens`), if any.
    pub max_tokens: Option<u32>,
}

impl RequestFeatures {
    /// Names of the values [`RequestFeatures::to_vec`] returns, in order. Stored in every
    /// checkpoint so a model trained on other features refuses to load.
    pub const NAMES: [&'static str; 6] = [
        "log_prompt_tokens",
        "log_turns",
        "has_code",
        "has_tools",
        "has_max_tokens",
        "log_max_tokens",
    ];

    /// Number of feature values.
    pub const LEN: usize = Self::NAMES.len();

    /// Computes the features from a conversation. `prompt_tokens` is the exact count when
    /// the caller has one; otherwise it is estimated at ~4 characters per token, which is
    /// plenty for a log-scaled feature.
    pub fn compute(
        messages: &[ChatTurn<'_>],
        has_tools: bool,
        max_tokens: Option<u32>,
        prompt_tokens: Option<u32>,
    ) -> Self {
        let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
        let estimated = u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX);
        let turns = messages.iter().filter(|m| m.role == "user").count();
        Self {
            prompt_tokens: prompt_tokens.unwrap_or(estimated),
            turns: u32::try_from(turns.max(1)).unwrap_or(u32::MAX),
            has_code: messages.iter().any(|m| looks_like_code(m.content)),
            has_tools,
            max_tokens,
        }
    }

    /// Features of a single user prompt (what the offline datasets have).
    pub fn for_prompt(prompt: &str) -> Self {
        Self::compute(
            &[ChatTurn {
                role: "user",
                content: prompt,
            }],
            false,
            None,
            None,
        )
    }

    /// The raw (unnormalised) feature values, in [`RequestFeatures::NAMES`] order.
    pub fn to_vec(&self) -> [f32; Self::LEN] {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        [
            (self.prompt_tokens as f32).ln_1p(),
            (self.turns as f32).ln_1p(),
            flag(self.has_code),
            flag(self.has_tools),
            flag(self.max_tokens.is_some()),
            self.max_tokens.map_or(0.0, |m| (m as f32).ln_1p()),
        ]
    }
}

/// A cheap code detector: fenced blocks, or several lines that look like source code.
pub fn looks_like_code(text: &str) -> bool {
    if text.contains("```") {
        return true;
    }
    const MARKERS: [&str; 14] = [
        "def ",
        "fn ",
        "function ",
        "class ",
        "import ",
        "#include",
        "return ",
        "public ",
        "SELECT ",
        "=> ",
        "};",
        "){",
        ") {",
        "console.",
    ];
    let code_lines = text
        .lines()
        .filter(|line| {
            let t = line.trim();
            MARKERS.iter().any(|m| t.contains(m))
                || (t.ends_with(';') && t.len() > 2)
                || t.ends_with('{')
                || t == "}"
        })
        .take(2)
        .count();
    code_lines >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_features_from_a_conversation() {
        let msgs = [
            ChatTurn {
                role: "system",
                content: "You are helpful.",
            },
            ChatTurn {
                role: "user",
                content: "Fix this:\n```rust\nfn main() {}\n```",
            },
            ChatTurn {
                role: "assistant",
                content: "Sure.",
            },
            ChatTurn {
                role: "user",
                content: "Thanks, and now?",
            },
        ];
        let f = RequestFeatures::compute(&msgs, true, Some(256), None);
        assert_eq!(f.turns, 2);
        assert!(f.has_code);
        assert!(f.has_tools);
        assert!(
            f.prompt_tokens > 10 && f.prompt_tokens < 40,
            "{}",
            f.prompt_tokens
        );
        let v = f.to_vec();
        assert_eq!(v.len(), RequestFeatures::LEN);
        assert!((v[5] - 257f32.ln()).abs() < 1e-5);
        assert_eq!(v[4], 1.0);
    }

    #[test]
    fn exact_token_count_wins_and_plain_text_is_not_code() {
        let f = RequestFeatures::compute(
            &[ChatTurn {
                role: "user",
                content: "What is the capital of France? Answer in one word.",
            }],
            false,
            None,
            Some(13),
        );
        assert_eq!(f.prompt_tokens, 13);
        assert!(!f.has_code);
        assert_eq!(f.to_vec()[4], 0.0);
        assert_eq!(f.to_vec()[5], 0.0);
    }

    #[test]
    fn detects_unfenced_code() {
        assert!(looks_like_code(
            "def add(a, b):\n    return a + b\nprint(add(1, 2))"
        ));
        assert!(!looks_like_code(
            "Write a poem about the sea; make it rhyme."
        ));
    }
}
