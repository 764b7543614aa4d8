//! Chat templates rendered as HF transformers renders them: `fixtures/chat_templates.json`,
//! written by `fixtures/gen.py` from transformers' `render_jinja_template` (what
//! `apply_chat_template(..., tokenize=False)` calls). Exact text; the learned spans are HF's
//! `{% generation %}` spans where the template has them, else each assistant turn's text and
//! end token.

use std::path::Path;

use lomo_data::{ChatMessage, ChatTemplate, JinjaTemplate};
use lomo_models::GgufFile;
use serde_json::Value;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chat_templates.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// SmolLM2-135M-Instruct's own template, from its GGUF (not committed).
fn smollm2_template() -> Option<String> {
    let path = lomo_testutil::smol_gguf(Path::new(env!("CARGO_TARGET_TMPDIR")))?;
    GgufFile::open(&path).unwrap().tokenizer().unwrap().chat_template
}

/// What an assistant turn without `{% generation %}` blocks learns: its text as the template
/// writes it, and the end token.
fn learned(template: &str, content: &str) -> String {
    match template {
        "llama3-style" => format!("{}<|eot_id|>", content.trim()),
        "qwen2.5-style" => format!("{}<|im_end|>", content.trim()),
        "smollm2" => format!("{content}<|im_end|>"),
        other => panic!("no rule for {other}"),
    }
}

#[test]
fn templates_render_as_hf_transformers_renders_them() {
    let fixture = fixture();
    let smollm2 = smollm2_template();
    let mut checked = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let spec = &fixture["templates"][name];
        let source = match spec["source"].as_str() {
            Some(s) => s.to_string(),
            None => match &smollm2 {
                Some(s) => s.clone(),
                None => continue,
            },
        };
        let template = ChatTemplate::Jinja(
            JinjaTemplate::new(&source, spec["bos_token"].as_str().unwrap(), spec["eos_token"].as_str().unwrap())
                .unwrap(),
        );
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = template.render(&messages, add_generation_prompt).unwrap();
        let what = format!("{name}, {} messages, add_generation_prompt {add_generation_prompt}", messages.len());
        assert_eq!(rendered.text, case["text"].as_str().unwrap(), "{what}");
        let spans: Vec<&str> = rendered.assistant_spans.iter().map(|s| &rendered.text[s.clone()]).collect();
        match case.get("generation_spans") {
            Some(hf) => {
                let hf: Vec<std::ops::Range<usize>> = hf
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s[0].as_u64().unwrap() as usize..s[1].as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(rendered.assistant_spans, hf, "{what}: {spans:?}");
            }
            None => {
                let expected: Vec<String> =
                    messages.iter().filter(|m| m.role == "assistant").map(|m| learned(name, &m.content)).collect();
                assert_eq!(spans, expected, "{what}");
            }
        }
        checked += 1;
    }
    let all = fixture["cases"].as_array().unwrap().len();
    assert!(checked == all || (smollm2.is_none() && checked >= all - 6), "only {checked} of {all} cases checked");
}

#[test]
fn a_model_without_a_template_gets_chatml() {
    let t = ChatTemplate::for_model(None, "<s>", "</s>").unwrap();
    assert_eq!(t, ChatTemplate::ChatMl);
}

/// Chat training data with SmolLM2-135M-Instruct's own template and tokenizer (from its GGUF):
/// the text is the template's (its default system turn included), and exactly the assistant
/// turns' tokens and their `<|im_end|>` carry labels.
#[test]
fn chat_data_learns_only_the_assistant_turns_of_smollm2s_template() {
    use lomo_data::{DataFormat, Dataset, EncodeConfig, TextTokenizer};
    let Some(path) = lomo_testutil::smol_gguf(Path::new(env!("CARGO_TARGET_TMPDIR"))) else { return };
    let spec = GgufFile::open(&path).unwrap().tokenizer().unwrap();
    let tokenizer = TextTokenizer::from_gguf(&spec).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chat_data");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("chat.jsonl");
    std::fs::write(
        &data,
        r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}"#,
    )
    .unwrap();
    let config = EncodeConfig { chat_template: tokenizer.chat_template().unwrap(), ..EncodeConfig::with_max_len(512) };
    let dataset = Dataset::load(&data, Some(DataFormat::Chat), Some(&tokenizer), &config).unwrap();
    let example = &dataset.examples[0];
    let text = tokenizer.decode(&example.input_ids, false).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    );
    let learned: Vec<u32> = example.labels.iter().filter(|&&l| l >= 0).map(|&l| l as u32).collect();
    assert_eq!(tokenizer.decode(&learned, false).unwrap(), "Hello!<|im_end|>4<|im_end|>");
}
