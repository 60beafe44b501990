//! A small HTTP/1.0 server on 127.0.0.1 for guests to talk to (through the user-mode
//! stack's 10.0.2.2): GET answers with the data it was given, POST keeps the body.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The server; it runs until the process ends.
pub struct HttpServer {
    pub port: u16,
    pub posted: Arc<Mutex<Option<Vec<u8>>>>,
}

impl HttpServer {
    pub fn start(data: Vec<u8>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let posted = Arc::new(Mutex::new(None));
        let (data, p) = (Arc::new(data), posted.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (data, p) = (data.clone(), p.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &data, &p);
                });
            }
        });
        HttpServer { port, posted }
    }
}

fn serve(conn: TcpStream, data: &[u8], posted: &Mutex<Option<Vec<u8>>>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut w = conn;
    if line.starts_with("POST") {
        let mut body = vec![0; length];
        r.read_exact(&mut body)?;
        *posted.lock().unwrap() = Some(body);
        w.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    } else {
        w.write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", data.len()).as_bytes())?;
        w.write_all(data)
    }
}
