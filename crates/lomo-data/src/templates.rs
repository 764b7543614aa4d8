//! Prompt templates: Stanford Alpaca's instruction prompt, and chat templates.
//!
//! A model's own chat template (`tokenizer_config.json`'s or GGUF's `chat_template`, Jinja) is
//! rendered with minijinja the way HF transformers' `apply_chat_template` renders it: the same
//! environment settings (`trim_blocks`, `lstrip_blocks`, loop controls, Python's string and
//! dict methods), the same variables (`messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`) and `raise_exception`. The loss is taken on assistant turns only: inside the
//! template's `{% generation %}` blocks where it has them (as `return_assistant_tokens_mask`
//! does), otherwise the text each assistant turn adds to the conversation rendered up to its
//! generation prompt. A model without a template gets ChatML, implemented natively.

use std::ops::Range;
use std::sync::Arc;

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChatTemplate {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per turn; generation prompt
    /// `<|im_start|>assistant\n`: the fallback for a model without a template.
    #[default]
    ChatMl,
    /// The model's own Jinja template.
    Jinja(JinjaTemplate),
}

/// A rendered conversation: the text, and the byte ranges of it that the model learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The whole conversation as text.
    pub text: String,
    /// Byte ranges of `text` on which the loss is taken.
    pub assistant_spans: Vec<Range<usize>>,
}

/// A chat template that cannot be compiled or rendered (its own message when it raised one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(pub String);

impl ChatTemplate {
    /// The model's template when it has one (`source`, with its BOS and EOS tokens as text),
    /// else ChatML.
    pub fn for_model(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        match source {
            Some(source) => Ok(Self::Jinja(JinjaTemplate::new(source, bos_token, eos_token)?)),
            None => Ok(Self::ChatMl),
        }
    }

    /// Whether the tokenizer should add its special tokens (BOS) to the rendered text: a model's
    /// template writes `bos_token` itself where it wants one (HF tokenizes its output with
    /// `add_special_tokens=False`); ChatML text is tokenized as plain text.
    pub fn add_special_tokens(&self) -> bool {
        matches!(self, Self::ChatMl)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the prompt for the
    /// next assistant turn.
    ///
    /// ChatML's learned span of an assistant turn covers its content and `<|im_end|>` (so the
    /// model learns to stop) but not the role header, which the prompt supplies at generation
    /// time, nor the newline after `<|im_end|>`, which generation never reaches.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<RenderedChat, TemplateError> {
        match self {
            Self::ChatMl => Ok(chatml(messages, add_generation_prompt)),
            Self::Jinja(t) => t.render(messages, add_generation_prompt),
        }
    }
}

fn chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> RenderedChat {
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
        text.push_str("<|im_start|>assistant\n");
    }
    RenderedChat { text, assistant_spans }
}

/// Written where a `{% generation %}` block starts and ends, then removed (private-use
/// characters, refused in messages).
const START: char = '\u{E000}';
const END: char = '\u{E001}';

/// A model's Jinja chat template, compiled once.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "JinjaSpec", into = "JinjaSpec")]
pub struct JinjaTemplate {
    spec: JinjaSpec,
    env: Arc<minijinja::Environment<'static>>,
    /// Whether the template has `{% generation %}` blocks.
    marked: bool,
}

/// What a [`JinjaTemplate`] is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JinjaSpec {
    /// The Jinja source, as in `tokenizer_config.json`.
    pub source: String,
    /// The text of the BOS token (`bos_token` in the template).
    pub bos_token: String,
    /// The text of the EOS token (`eos_token` in the template).
    pub eos_token: String,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate").field("spec", &self.spec).field("marked", &self.marked).finish()
    }
}

impl PartialEq for JinjaTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Eq for JinjaTemplate {}

impl TryFrom<JinjaSpec> for JinjaTemplate {
    type Error = TemplateError;
    fn try_from(spec: JinjaSpec) -> Result<Self, TemplateError> {
        Self::new(&spec.source, &spec.bos_token, &spec.eos_token)
    }
}

impl From<JinjaTemplate> for JinjaSpec {
    fn from(t: JinjaTemplate) -> Self {
        t.spec
    }
}

fn template_error(e: minijinja::Error) -> TemplateError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        message.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    TemplateError(message)
}

impl JinjaTemplate {
    /// Compiles `source` (a syntax error is reported here, not at the first example).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let (marked_source, marked) = mark_generation(source);
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat_template", marked_source).map_err(template_error)?;
        let spec =
            JinjaSpec { source: source.to_owned(), bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() };
        Ok(Self { spec, env: Arc::new(env), marked })
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.spec.source
    }

    /// The text exactly as `apply_chat_template(messages, tokenize=False, ...)` gives it, with
    /// the generation markers still in.
    fn render_marked(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let template = self.env.get_template("chat_template").map_err(template_error)?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.spec.bos_token,
                eos_token => &self.spec.eos_token,
                __lomo_generation_start => START.to_string(),
                __lomo_generation_end => END.to_string(),
            })
            .map_err(template_error)
    }

    fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<RenderedChat, TemplateError> {
        if messages.iter().any(|m| m.content.contains([START, END]) || m.role.contains([START, END])) {
            return Err(TemplateError("a message contains U+E000 or U+E001, which lomo reserves".into()));
        }
        let marked = self.render_marked(messages, add_generation_prompt)?;
        if self.marked {
            return unmark(&marked);
        }
        // No markers: an assistant turn learns what it adds to the conversation rendered up to
        // its generation prompt, less trailing whitespace (ChatML's newline after
        // `<|im_end|>`), which generation never reaches.
        let text = marked;
        let mut assistant_spans = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let prompt = self.render_marked(&messages[..i], true)?;
            let turn = self.render_marked(&messages[..=i], false)?;
            if !turn.starts_with(&prompt) || !text.starts_with(&turn) {
                return Err(TemplateError(format!(
                    "message {i} (assistant) is not rendered after its own generation prompt, or later messages change how it is rendered; lomo cannot tell which text is the answer (give the template {{% generation %}} blocks)"
                )));
            }
            let end = turn.trim_end().len().max(prompt.len());
            if end > prompt.len() {
                assistant_spans.push(prompt.len()..end);
            }
        }
        Ok(RenderedChat { text, assistant_spans })
    }
}

/// Replaces `{% generation %}` / `{% endgeneration %}` (HF's assistant-mask extension, which
/// minijinja does not know) by expressions writing [`START`] / [`END`], keeping the whitespace
/// rules of a block tag: `-` strips, and without it `lstrip_blocks` removes the indentation
/// before the tag and `trim_blocks` the newline after it.
fn mark_generation(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut marked = false;
    while let Some(open) = rest.find("{%") {
        let Some(close) = rest[open..].find("%}").map(|c| open + c) else { break };
        let inner = &rest[open + 2..close];
        let (left, right) = (
            inner.starts_with(['-', '+']).then(|| &inner[..1]),
            inner.ends_with(['-', '+']).then(|| &inner[inner.len() - 1..]),
        );
        let word = inner.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']).trim();
        let var = match word {
            "generation" => "__lomo_generation_start",
            "endgeneration" => "__lomo_generation_end",
            _ => {
                out.push_str(&rest[..close + 2]);
                rest = &rest[close + 2..];
                continue;
            }
        };
        marked = true;
        let mut before = &rest[..open];
        if left.is_none() {
            // lstrip_blocks: only whitespace between the line's start and the tag.
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let indent = &before[line_start..];
            let at_line_start = line_start > 0 || out.is_empty() || out.ends_with('\n');
            if at_line_start && indent.chars().all(|c| c == ' ' || c == '\t') {
                before = &before[..line_start];
            }
        }
        out.push_str(before);
        out.push_str(if left == Some("-") { "{{- " } else { "{{ " });
        out.push_str(var);
        out.push_str(if right == Some("-") { " -}}" } else { " }}" });
        rest = &rest[close + 2..];
        if right.is_none() {
            // trim_blocks: the first newline after a block tag.
            rest = rest.strip_prefix("\r\n").or_else(|| rest.strip_prefix('\n')).unwrap_or(rest);
        }
    }
    out.push_str(rest);
    (out, marked)
}

/// The text without its markers, and the byte ranges the marker pairs enclosed.
fn unmark(marked: &str) -> Result<RenderedChat, TemplateError> {
    let mut text = String::with_capacity(marked.len());
    let mut assistant_spans = Vec::new();
    let mut open = None;
    for c in marked.chars() {
        match c {
            START if open.is_none() => open = Some(text.len()),
            END => match open.take() {
                Some(start) if text.len() > start => assistant_spans.push(start..text.len()),
                Some(_) => {}
                None => return Err(TemplateError("{% endgeneration %} without {% generation %}".into())),
            },
            START => return Err(TemplateError("{% generation %} inside another".into())),
            c => text.push(c),
        }
    }
    if open.is_some() {
        return Err(TemplateError("{% generation %} without {% endgeneration %}".into()));
    }
    Ok(RenderedChat { text, assistant_spans })
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
        let r = ChatTemplate::ChatMl.render(&messages, false).unwrap();
        assert_eq!(r.text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n");
        assert_eq!(r.assistant_spans.len(), 1);
        assert_eq!(&r.text[r.assistant_spans[0].clone()], "Hello!<|im_end|>");
        let g = ChatTemplate::ChatMl.render(&messages[..1], true).unwrap();
        assert!(g.text.ends_with("<|im_end|>\n<|im_start|>assistant\n"));
        assert!(g.assistant_spans.is_empty());
    }

    fn turns(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs.iter().map(|(role, content)| ChatMessage { role: (*role).into(), content: (*content).into() }).collect()
    }

    #[test]
    fn a_jinja_template_learns_what_each_assistant_turn_adds() {
        let t = ChatTemplate::for_model(
            Some("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"),
            "<s>",
            "</s>",
        )
        .unwrap();
        let r = t
            .render(&turns(&[("user", "Hi "), ("assistant", " Hello!"), ("user", "Bye"), ("assistant", "Bye!")]), false)
            .unwrap();
        assert_eq!(r.text, "<s><user>Hi</s>\n<assistant>Hello!</s>\n<user>Bye</s>\n<assistant>Bye!</s>\n");
        let spans: Vec<&str> = r.assistant_spans.iter().map(|s| &r.text[s.clone()]).collect();
        assert_eq!(spans, ["Hello!</s>", "Bye!</s>"]);
        assert!(!t.add_special_tokens() && ChatTemplate::ChatMl.add_special_tokens());
    }

    #[test]
    fn generation_blocks_mark_the_learned_text_and_keep_block_whitespace() {
        let source = "{% for m in messages %}\n{% if m.role == 'assistant' %}\nA: \n  {% generation %}\n{{ m.content }}!\n  {%- endgeneration %}\n{% else %}\nU: {{ m.content }}\n{% endif %}\n{% endfor %}";
        let t = JinjaTemplate::new(source, "", "").unwrap();
        let r = t.render(&turns(&[("user", "x"), ("assistant", "y")]), false).unwrap();
        // As Jinja with trim_blocks and lstrip_blocks renders the same template without the
        // generation tags.
        assert_eq!(r.text, "U: x\nA: \ny!");
        assert_eq!(&r.text[r.assistant_spans[0].clone()], "y!");
    }

    #[test]
    fn template_errors_are_reported() {
        assert!(JinjaTemplate::new("{% for m in messages %}", "", "").is_err());
        let t = JinjaTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first turn must be the user') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&turns(&[("assistant", "x")]), false).unwrap_err();
        assert!(e.to_string().contains("first turn must be the user"), "{e}");
        let e = t.render(&turns(&[("user", "\u{E000}")]), false).unwrap_err();
        assert!(e.to_string().contains("U+E000"), "{e}");
    }

    #[test]
    fn a_template_whose_turns_depend_on_later_ones_is_refused() {
        // The last turn is rendered differently from the others: no prefix holds.
        let t = JinjaTemplate::new(
            "{% for m in messages %}{{ m.content }}{% if loop.last %}.{% else %};{% endif %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(t.render(&turns(&[("user", "a"), ("assistant", "b"), ("user", "c")]), false).is_err());
    }
}
