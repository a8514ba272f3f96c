use kvroute_tokenizer::ModelTokenizer;
use std::time::Instant;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let t = ModelTokenizer::from_dir(std::path::Path::new(&dir)).unwrap();
    let bodies: Vec<Vec<u8>> = (0..20)
        .map(|i| std::fs::read(format!("/tmp/w15/bodies/{i}.json")).unwrap())
        .collect();
    for b in &bodies {
        t.encode_chat_bytes(b).unwrap();
    }
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..20 {
        for b in &bodies {
            n += t.encode_chat_bytes(b).unwrap().len();
        }
    }
    println!(
        "encode_chat_bytes warm: {:?} per call ({} tokens avg)",
        start.elapsed() / 400,
        n / 400
    );
}
