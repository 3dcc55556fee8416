use super::*;

#[test]
fn uids_in_hex_with_separators() {
    let want = vec![0x04, 0xa2, 0x2b, 0x1a];
    for s in [
        "04A22B1A",
        "04 a2 2b 1a",
        "04:A2:2B:1A\n",
        " 04-a2-2b-1a \r\n",
    ] {
        assert_eq!(parse_uid(s), Ok(want.clone()), "{s:?}");
    }
    assert_eq!(
        parse_uid("04a22b1a5c6d80"),
        Ok(vec![4, 0xa2, 0x2b, 0x1a, 0x5c, 0x6d, 0x80])
    );
    for (bad, problem) in [
        ("", "empty"),
        ("04A22B1", "two digits per byte"),
        ("04G22B1A", "'G' is not a hex digit"),
        ("0102030405060708090a0b", "at most 10"),
    ] {
        let e = parse_uid(bad).unwrap_err();
        assert!(e.contains(problem), "{bad:?}: {e}");
    }
}

#[tokio::test]
async fn stdin_lines_become_badges_and_bad_lines_are_counted() {
    let input: &[u8] = b"04:A2:2B:1A\n\nnot a badge\n04a22b1a5c6d80\n\xff\xfe\n0102\n";
    let (tx, mut rx) = mpsc::channel(16);
    let stats = read_badge_lines("test", input, 3, &tx, &CancellationToken::new()).await;
    assert_eq!(stats, LineStats { badges: 3, bad: 2 });
    let mut got = Vec::new();
    while let Ok(r) = rx.try_recv() {
        got.push(r);
    }
    assert_eq!(
        got,
        vec![
            (3, Reading::Badge(vec![4, 0xa2, 0x2b, 0x1a])),
            (
                3,
                Reading::Badge(vec![4, 0xa2, 0x2b, 0x1a, 0x5c, 0x6d, 0x80])
            ),
            (3, Reading::Badge(vec![1, 2])),
        ]
    );
}

#[tokio::test]
async fn stdin_reading_stops_at_shutdown() {
    let (mut w, r) = tokio::io::duplex(64);
    let (tx, mut rx) = mpsc::channel(4);
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            read_badge_lines("test", tokio::io::BufReader::new(r), 0, &tx, &stop).await
        })
    };
    tokio::io::AsyncWriteExt::write_all(&mut w, b"0A0B0C0D\n")
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("a badge within 5 s");
    assert_eq!(got, Some((0, Reading::Badge(vec![10, 11, 12, 13]))));
    stop.cancel();
    let stats = tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("stops")
        .unwrap();
    assert_eq!(stats.badges, 1);
}

/// Key presses and releases of `text` followed by Enter, as a wedge reader sends them.
fn typed(text: &str, enter: u16) -> Vec<(u16, i32)> {
    let code = |c: char| -> u16 {
        match c {
            '1'..='9' => c as u16 - '1' as u16 + 2,
            '0' => 11,
            'a' => 30,
            'b' => 48,
            'c' => 46,
            'd' => 32,
            'e' => 18,
            'f' => 33,
            _ => panic!("{c}"),
        }
    };
    let mut keys = Vec::new();
    for c in text.chars() {
        keys.push((code(c), 1));
        keys.push((code(c), 0));
    }
    keys.push((enter, 1));
    keys.push((enter, 0));
    keys
}

fn feed(d: &mut WedgeDecoder, keys: &[(u16, i32)]) -> Vec<Result<Vec<u8>, String>> {
    keys.iter().filter_map(|&(c, v)| d.on_key(c, v)).collect()
}

#[test]
fn wedge_decimal_uids_little_and_big_endian() {
    // 04 A2 2B 1A: little-endian 0x1A2BA204 = 439067140, big-endian 0x04A22B1A = 77736730.
    let mut le = WedgeDecoder::new(DecimalOrder::Le);
    assert_eq!(
        feed(&mut le, &typed("0439067140", keys::KEY_ENTER)),
        vec![Ok(vec![0x04, 0xa2, 0x2b, 0x1a])]
    );
    let mut be = WedgeDecoder::new(DecimalOrder::Be);
    assert_eq!(
        feed(&mut be, &typed("0077736730", keys::KEY_KPENTER)),
        vec![Ok(vec![0x04, 0xa2, 0x2b, 0x1a])]
    );
    let e = feed(&mut be, &typed("9999999999", keys::KEY_ENTER));
    assert!(
        matches!(&e[..], [Err(m)] if m.contains("not a 4-byte UID")),
        "{e:?}"
    );
}

#[test]
fn wedge_hex_uids_with_shift_and_repeats() {
    let mut d = WedgeDecoder::new(DecimalOrder::Le);
    // Upper-case hex: Shift (42) held around letters; a key repeat (value 2) is not typed twice.
    let keys = [
        (11, 1),
        (11, 0),
        (5, 1),
        (5, 0), // 0 4
        (42, 1),
        (30, 1),
        (30, 2),
        (30, 0),
        (42, 0),
        (3, 1),
        (3, 0), // A 2
        (3, 1),
        (3, 0),
        (42, 1),
        (48, 1),
        (48, 0),
        (42, 0), // 2 B
        (2, 1),
        (2, 0),
        (42, 1),
        (30, 1),
        (30, 0),
        (42, 0), // 1 A
        (28, 1),
        (28, 0),
    ];
    assert_eq!(feed(&mut d, &keys), vec![Ok(vec![0x04, 0xa2, 0x2b, 0x1a])]);
    // 7-byte UID in hex, then a second card: each line stands alone.
    let mut keys = typed("04a22b1a5c6d80", keys::KEY_ENTER);
    keys.extend(typed("deadbeef", keys::KEY_ENTER));
    assert_eq!(
        feed(&mut d, &keys),
        vec![
            Ok(vec![4, 0xa2, 0x2b, 0x1a, 0x5c, 0x6d, 0x80]),
            Ok(vec![0xde, 0xad, 0xbe, 0xef])
        ]
    );
    // A bare Enter is no badge; an odd line is a problem, and the next line still decodes.
    let mut keys = vec![(28, 1), (28, 0)];
    keys.extend(typed("123", keys::KEY_ENTER));
    keys.extend(typed("0a0b0c0d", keys::KEY_ENTER));
    let got = feed(&mut d, &keys);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(&got[0], Err(m) if m.contains("two digits per byte")),
        "{got:?}"
    );
    assert_eq!(got[1], Ok(vec![10, 11, 12, 13]));
}

#[test]
fn a_missing_wedge_reader_names_the_path_and_the_fix() {
    let e = open_wedge(
        "machine 0 badge",
        "/dev/input/by-id/no-such-reader-event-kbd",
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("/dev/input/by-id/no-such-reader-event-kbd does not exist"),
        "{text}"
    );
    assert!(text.contains("ls /dev/input/by-id/"), "{text}");
}
