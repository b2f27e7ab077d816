//! The tracker against hand-built packet sequences: every response shape, split anywhere.

use super::*;
use crate::mysql::codec::MAX_PAYLOAD;

const SERVER_CAPS: u32 = 0xA3FF_F7FF & !CLIENT_SSL & !CLIENT_COMPRESS;
const AUTOCOMMIT: u16 = 0x0002;

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut bytes = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    bytes.extend_from_slice(payload);
    bytes
}

fn greeting() -> Vec<u8> {
    let mut p = vec![0x0A];
    p.extend_from_slice(b"10.11.19-MariaDB\0");
    p.extend_from_slice(&42u32.to_le_bytes());
    p.extend_from_slice(b"12345678\0");
    p.extend_from_slice(&(SERVER_CAPS as u16).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&AUTOCOMMIT.to_le_bytes());
    p.extend_from_slice(&((SERVER_CAPS >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"123456789012\0mysql_native_password\0");
    packet(0, &p)
}

fn handshake_response(caps: u32) -> Vec<u8> {
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(b"odp\0\x14");
    p.extend_from_slice(&[7; 20]);
    packet(1, &p)
}

fn ok(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    packet(seq, &p)
}

/// The OK that ends a result under CLIENT_DEPRECATE_EOF.
fn ok_fe(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0xFE, 0x00, 0x00];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    packet(seq, &p)
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0xFE, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    packet(seq, &p)
}

fn err(seq: u8) -> Vec<u8> {
    packet(
        seq,
        b"\xFF\x28\x04#42000You have an error in your SQL syntax",
    )
}

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![0x03];
    p.extend_from_slice(sql.as_bytes());
    packet(0, &p)
}

fn column_def(seq: u8) -> Vec<u8> {
    let mut p = Vec::new();
    for s in ["def", "odp", "t", "t", "k", "k"] {
        p.push(s.len() as u8);
        p.extend_from_slice(s.as_bytes());
    }
    p.extend_from_slice(&[0x0C, 45, 0, 0, 1, 0, 0, 253, 0, 0, 0, 0, 0]);
    packet(seq, &p)
}

/// A logged-in session, fed in one piece or byte by byte.
fn logged_in(deprecate_eof: bool) -> Session {
    let mut caps = CLIENT_PROTOCOL_41 | 0x000F_A28D;
    if deprecate_eof {
        caps |= CLIENT_DEPRECATE_EOF;
    }
    let mut session = Session::default();
    session.server_sent(&greeting());
    session.client_sent(&handshake_response(caps));
    session.server_sent(&ok(2, AUTOCOMMIT));
    assert!(session.at_boundary(), "{session:?}");
    assert!(session.take_completed());
    session
}

/// Feeds an exchange (client bytes, server bytes, ...) in the given order.
fn exchange(session: &mut Session, steps: &[(bool, Vec<u8>)]) {
    for (from_client, bytes) in steps {
        if *from_client {
            session.client_sent(bytes);
        } else {
            session.server_sent(bytes);
        }
    }
}

#[test]
fn handshake_ends_at_a_boundary_with_the_final_ok() {
    let mut session = Session::default();
    session.server_sent(&greeting());
    assert!(!session.at_boundary());
    session.client_sent(&handshake_response(
        CLIENT_PROTOCOL_41 | CLIENT_DEPRECATE_EOF,
    ));
    assert!(!session.at_boundary(), "authentication is in flight");
    // Auth switch request (0xFE ...) and the client's answer are not an EOF and a command.
    session.server_sent(&packet(
        2,
        b"\xFEmysql_native_password\0abcdefghijklmnopqrst\0",
    ));
    session.client_sent(&packet(3, &[9; 20]));
    assert!(!session.at_boundary());
    session.server_sent(&packet(4, b"\x01\x03"));
    assert!(!session.at_boundary(), "more data is not the end");
    session.server_sent(&ok(5, AUTOCOMMIT));
    assert!(session.at_boundary(), "{session:?}");
    assert_eq!(session.state(), "at-boundary");
}

#[test]
fn in_trans_from_ok_packets_decides_the_boundary() {
    let mut s = logged_in(true);
    s.client_sent(&query("BEGIN"));
    assert!(!s.at_boundary(), "a command in flight");
    s.server_sent(&ok(1, AUTOCOMMIT | IN_TRANS));
    assert!(!s.at_boundary(), "inside a transaction");
    assert!(s.take_completed());
    s.client_sent(&query("INSERT INTO t VALUES (1)"));
    s.server_sent(&ok(1, AUTOCOMMIT | IN_TRANS));
    assert!(!s.at_boundary());
    s.client_sent(&query("COMMIT"));
    s.server_sent(&ok(1, AUTOCOMMIT));
    assert!(s.at_boundary());
}

#[test]
fn an_err_keeps_the_last_known_transaction_state() {
    let mut s = logged_in(false);
    exchange(&mut s, &[(true, query("BEGIN")), (false, ok(1, IN_TRANS))]);
    exchange(&mut s, &[(true, query("bogus")), (false, err(1))]);
    assert!(!s.at_boundary(), "still in the transaction after an error");
    exchange(
        &mut s,
        &[(true, query("ROLLBACK")), (false, ok(1, AUTOCOMMIT))],
    );
    assert!(s.at_boundary());
    exchange(&mut s, &[(true, query("bogus")), (false, err(1))]);
    assert!(
        s.at_boundary(),
        "an error outside a transaction is a boundary"
    );
}

#[test]
fn rows_that_look_like_ok_or_eof_do_not_end_a_result_set() {
    for deprecate_eof in [false, true] {
        let mut s = logged_in(deprecate_eof);
        exchange(&mut s, &[(true, query("BEGIN")), (false, ok(1, IN_TRANS))]);
        assert!(s.take_completed());
        s.client_sent(&query("SELECT '', 'x'"));
        let mut seq = 1;
        let mut next = || {
            seq += 1;
            seq - 1
        };
        s.server_sent(&packet(next(), &[0x02]));
        s.server_sent(&column_def(next()));
        s.server_sent(&column_def(next()));
        if !deprecate_eof {
            s.server_sent(&eof(next(), IN_TRANS));
        }
        // A text row whose first value is empty reads like an OK with no status bits.
        s.server_sent(&packet(
            next(),
            &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, b'x'],
        ));
        // A row starting with 0xFE but too long for an EOF (in text protocol it
        // announces a value over 16 MiB; only the length rule tells them apart).
        if !deprecate_eof {
            s.server_sent(&packet(next(), &[0xFE, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        }
        assert!(!s.at_boundary(), "rows are not the end");
        assert!(!s.take_completed());
        let end = if deprecate_eof {
            ok_fe(next(), IN_TRANS)
        } else {
            eof(next(), IN_TRANS)
        };
        s.server_sent(&end);
        assert!(s.take_completed(), "deprecate_eof={deprecate_eof}");
        assert!(!s.at_boundary(), "still in the transaction");
        exchange(&mut s, &[(true, query("COMMIT")), (false, ok(1, 0))]);
        assert!(s.at_boundary(), "deprecate_eof={deprecate_eof}");
    }
}

#[test]
fn a_result_set_ended_by_err_is_complete() {
    let mut s = logged_in(false);
    s.client_sent(&query("SELECT k FROM t"));
    s.server_sent(&packet(1, &[0x01]));
    s.server_sent(&column_def(2));
    s.server_sent(&eof(3, 0));
    s.server_sent(&packet(4, &[0x01, b'a']));
    assert!(!s.at_boundary());
    s.server_sent(&err(5));
    assert!(s.at_boundary());
}

#[test]
fn more_results_keep_the_command_in_flight() {
    let mut s = logged_in(true);
    s.client_sent(&query("CALL p()"));
    s.server_sent(&packet(1, &[0x01]));
    s.server_sent(&column_def(2));
    s.server_sent(&packet(3, &[0x00]));
    s.server_sent(&ok_fe(4, MORE_RESULTS));
    assert!(!s.at_boundary(), "another result follows");
    s.server_sent(&ok(5, MORE_RESULTS));
    assert!(!s.at_boundary());
    s.server_sent(&ok(6, AUTOCOMMIT));
    assert!(s.at_boundary());
}

#[test]
fn binary_rows_start_with_zero_and_are_not_ok_packets() {
    let mut s = logged_in(false);
    exchange(&mut s, &[(true, query("BEGIN")), (false, ok(1, IN_TRANS))]);
    assert!(s.take_completed());
    // COM_STMT_PREPARE: one column, one parameter, each with its EOF.
    s.client_sent(&packet(0, b"\x16SELECT k FROM t WHERE k = ?"));
    s.server_sent(&packet(1, &[0x00, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]));
    s.server_sent(&column_def(2));
    s.server_sent(&eof(3, IN_TRANS));
    s.server_sent(&column_def(4));
    assert!(!s.at_boundary(), "definitions still to come");
    s.server_sent(&eof(5, IN_TRANS));
    assert!(s.take_completed());
    // COM_STMT_EXECUTE: a binary result set.
    s.client_sent(&packet(
        0,
        &[0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 254, 0, 1, b'a'],
    ));
    s.server_sent(&packet(1, &[0x01]));
    s.server_sent(&column_def(2));
    s.server_sent(&eof(3, IN_TRANS));
    s.server_sent(&packet(4, &[0x00, 0x00, 0x01, b'a']));
    s.server_sent(&packet(5, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]));
    assert!(!s.take_completed());
    s.server_sent(&eof(6, IN_TRANS));
    assert!(s.take_completed());
    assert!(!s.at_boundary(), "the transaction is still open");
    // COM_STMT_CLOSE has no response: nothing is left in flight.
    exchange(&mut s, &[(true, query("COMMIT")), (false, ok(1, 0))]);
    s.client_sent(&packet(0, &[0x19, 1, 0, 0, 0]));
    assert!(s.at_boundary());
}

#[test]
fn local_infile_waits_for_the_file_and_the_final_ok() {
    let mut s = logged_in(true);
    s.client_sent(&query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t"));
    s.server_sent(&packet(1, b"\xFBf"));
    s.client_sent(&packet(2, b"1\n2\n"));
    assert!(!s.at_boundary());
    s.client_sent(&packet(3, b""));
    assert!(!s.at_boundary(), "the server has not answered yet");
    s.server_sent(&ok(4, AUTOCOMMIT));
    assert!(s.at_boundary());
    assert_eq!(s.state(), "at-boundary");
}

#[test]
fn packets_split_anywhere_read_the_same() {
    let mut s = Session::default();
    let steps: Vec<(bool, Vec<u8>)> = vec![
        (false, greeting()),
        (true, handshake_response(CLIENT_PROTOCOL_41)),
        (false, ok(2, AUTOCOMMIT)),
        (true, query("BEGIN")),
        (false, ok(1, IN_TRANS)),
        (true, query("SELECT 1")),
        (
            false,
            [packet(1, &[1]), column_def(2), eof(3, IN_TRANS)].concat(),
        ),
        (false, [packet(4, &[0x00]), eof(5, IN_TRANS)].concat()),
    ];
    for (from_client, step) in &steps {
        for byte in step.chunks(1) {
            if *from_client {
                s.client_sent(byte);
            } else {
                s.server_sent(byte);
            }
        }
    }
    assert_eq!(s.state(), "in-transaction");
    assert!(!s.at_boundary());
    s.client_sent(&query("COMMIT")[..3]);
    assert!(!s.at_boundary(), "half a command");
    s.client_sent(&query("COMMIT")[3..]);
    let reply = ok(1, AUTOCOMMIT);
    s.server_sent(&reply[..6]);
    assert!(!s.at_boundary(), "half a response");
    s.server_sent(&reply[6..]);
    assert!(s.at_boundary());
}

#[test]
fn a_row_longer_than_one_packet_is_one_row() {
    let mut s = logged_in(true);
    exchange(
        &mut s,
        &[(true, query("SELECT blob")), (false, packet(1, &[1]))],
    );
    // A first packet of exactly 16 MiB - 1 that starts like an OK-with-0xFE, continued
    // by an empty packet: one row, not the end of the result.
    let mut big = vec![0u8; MAX_PAYLOAD];
    big[0] = 0xFE;
    s.server_sent(&packet(2, &big));
    s.server_sent(&packet(3, &[]));
    assert!(!s.take_completed());
    s.server_sent(&ok_fe(4, AUTOCOMMIT));
    assert!(s.at_boundary());
}

#[test]
fn what_is_not_mysql_is_untracked_and_never_at_a_boundary() {
    let mut plain = Session::default();
    plain.server_sent(b"hello, this is not a greeting");
    assert_eq!(plain.state(), "not-mysql");
    assert!(!plain.at_boundary());

    let mut eager = Session::default();
    eager.client_sent(b"ping");
    eager.server_sent(&greeting());
    assert_eq!(eager.state(), "not-mysql");

    // An echo of the client's own bytes never looks like a greeting.
    let mut echo = Session::default();
    echo.server_sent(b"GET / HTTP/1.1\r\n");
    assert_eq!(echo.state(), "not-mysql");

    let mut short = Session::default();
    short.server_sent(&packet(0, b"\x0A5.7"));
    assert_eq!(
        short.state(),
        "not-mysql",
        "a version with no NUL is no greeting"
    );
}

#[test]
fn tls_compression_and_quit_stop_the_tracking() {
    for (caps, why) in [
        (CLIENT_PROTOCOL_41 | CLIENT_SSL, "tls"),
        (CLIENT_PROTOCOL_41 | CLIENT_COMPRESS, "compression"),
        (0x0000_A28D & !CLIENT_PROTOCOL_41, "pre-4.1-protocol"),
    ] {
        let mut s = Session::default();
        s.server_sent(&greeting());
        // This server offers TLS and compression too.
        if let Phase::HandshakeResponse { server_caps } = &mut s.phase {
            *server_caps |= CLIENT_SSL | CLIENT_COMPRESS;
        }
        s.client_sent(&handshake_response(caps));
        assert_eq!(s.state(), why);
        s.server_sent(&ok(2, 0));
        assert!(!s.at_boundary());
    }
    let mut s = logged_in(true);
    s.client_sent(&packet(0, &[0x01]));
    assert_eq!(s.state(), "quit");
    assert!(!s.at_boundary());
}

#[test]
fn a_refused_connection_is_mysql_but_never_at_a_boundary() {
    let mut s = Session::default();
    s.server_sent(&packet(0, b"\xFF\x10\x04Too many connections"));
    assert_eq!(s.state(), "refused");
}

#[test]
fn simple_commands_and_statistics_complete_in_one_packet() {
    let mut s = logged_in(false);
    exchange(
        &mut s,
        &[(true, packet(0, &[0x0E])), (false, ok(1, AUTOCOMMIT))],
    );
    assert!(s.at_boundary());
    exchange(
        &mut s,
        &[
            (true, packet(0, &[0x09])),
            (false, packet(1, b"Uptime: 5  Threads: 1")),
        ],
    );
    assert!(s.at_boundary());
    // COM_SET_OPTION answers with an EOF.
    exchange(
        &mut s,
        &[(true, packet(0, &[0x1B, 0, 0])), (false, eof(1, IN_TRANS))],
    );
    assert!(!s.at_boundary(), "the EOF's status is read");
}
