//! Prompt templates: Stanford Alpaca's instruction prompt and the ChatML chat format.
//!
//! Both are implemented natively (no Jinja engine): they are fixed strings, and a template engine
//! would be a large dependency for two `format!`s. A Jinja template found in a
//! `tokenizer_config.json` or GGUF file is recognised as ChatML by its markers
//! ([`ChatTemplate::detect`]).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Alpaca's prompt for an example with a non-empty `input`, exactly as Stanford Alpaca's
/// `train.py` (`PROMPT_DICT["prompt_input"]`) writes it; the response follows directly.
pub const ALPACA_PROMPT_WITH_INPUT: &str = "Below is an instruction that describes a task, \
paired with an input that provides further context. Write a response that appropriately \
completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";

/// Alpaca's prompt for an example with an empty `input` (`PROMPT_DICT["prompt_no_input"]`).
pub const ALPACA_PROMPT_NO_INPUT: &str = "Below is an instruction that describes a task. \
Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\
\n\n### Response:";

/// The Alpaca prompt for one example (the template with input when `input` is not empty).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    // Replacing `{input}` after `{instruction}` could substitute inside the instruction's own
    // text; splitting the template keeps user text out of the substitution.
    if input.is_empty() {
        let (head, tail) = split_placeholder(ALPACA_PROMPT_NO_INPUT, "{instruction}");
        format!("{head}{instruction}{tail}")
    } else {
        let (head, rest) = split_placeholder(ALPACA_PROMPT_WITH_INPUT, "{instruction}");
        let (middle, tail) = split_placeholder(rest, "{input}");
        format!("{head}{instruction}{middle}{input}{tail}")
    }
}

fn split_placeholder<'a>(template: &'a str, placeholder: &str) -> (&'a str, &'a str) {
    let at = template.find(placeholder).expect("the Alpaca templates contain their placeholders");
    (&template[..at], &template[at + placeholder.len()..])
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (other roles are rendered as given).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

/// A chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChatTemplate {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per turn; generation prompt
    /// `<|im_start|>assistant\n` (SmolLM2, Qwen, OpenHermes).
    #[default]
    ChatMl,
}

/// A rendered conversation: the text, and the byte ranges of it that the model learns (each
/// assistant turn's content and its closing `<|im_end|>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The whole conversation as text.
    pub text: String,
    /// Byte ranges of `text` on which the loss is taken.
    pub assistant_spans: Vec<Range<usize>>,
}

impl ChatTemplate {
    /// Recognises a Jinja chat template by its markers: ChatML's `<|im_start|>` and `<|im_end|>`.
    /// Returns `None` for any other template (the caller decides what to do with it).
    pub fn detect(jinja: &str) -> Option<ChatTemplate> {
        (jinja.contains("<|im_start|>") && jinja.contains("<|im_end|>")).then_some(Self::ChatMl)
    }

    /// The text that asks the model for the next assistant turn.
    pub fn generation_prompt(&self) -> &'static str {
        match self {
            Self::ChatMl => "<|im_start|>assistant\n",
        }
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the generation prompt.
    ///
    /// The learned span of an assistant turn covers its content and `<|im_end|>` (so the model
    /// learns to stop) but not the role header, which the prompt supplies at generation time,
    /// nor the newline after `<|im_end|>`, which generation never reaches.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> RenderedChat {
        let mut text = String::new();
        let mut assistant_spans = Vec::new();
        for message in messages {
            text.push_str("<|im_start|>");
            text.push_str(&message.role);
            text.push('\n');
            let start = text.len();
            text.push_str(&message.content);
            text.push_str("<|im_end|>");
            if message.role == "assistant" {
                assistant_spans.push(start..text.len());
            }
            text.push('\n');
        }
        if add_generation_prompt {
            text.push_str(self.generation_prompt());
        }
        RenderedChat { text, assistant_spans }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_prompts_are_stanfords() {
        assert_eq!(
            alpaca_prompt("Add.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\nAdd.\n\n### Response:"
        );
        assert_eq!(
            alpaca_prompt("Add {input}.", "1 and 2"),
            "Below is an instruction that describes a task, paired with an input that provides \
             further context. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\nAdd {input}.\n\n### Input:\n1 and 2\n\n### Response:"
        );
    }

    #[test]
    fn chatml_renders_turns_and_spans() {
        let messages = vec![
            ChatMessage { role: "user".into(), content: "Hi".into() },
            ChatMessage { role: "assistant".into(), content: "Hello!".into() },
        ];
        let r = ChatTemplate::ChatMl.render(&messages, false);
        assert_eq!(
            r.text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        );
        assert_eq!(r.assistant_spans.len(), 1);
        assert_eq!(&r.text[r.assistant_spans[0].clone()], "Hello!<|im_end|>");
        let g = ChatTemplate::ChatMl.render(&messages[..1], true);
        assert!(g.text.ends_with("<|im_end|>\n<|im_start|>assistant\n"));
        assert!(g.assistant_spans.is_empty());
    }

    #[test]
    fn detects_chatml_jinja_only() {
        let smollm = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
                      message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        assert_eq!(ChatTemplate::detect(smollm), Some(ChatTemplate::ChatMl));
        assert_eq!(ChatTemplate::detect("{{ bos_token }}[INST] {{ m }} [/INST]"), None);
    }
}
