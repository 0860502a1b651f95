//! The forwarder's one epoll set (the supervisor polls its descriptor for all of the
//! forwarder's sockets): what each registration is about, kept in the event's data.

/// What an epoll event is about: a kind in the top byte, an index or id below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    ListenUdp(usize),
    ListenTcp(usize),
    Client(u64),
    Upstream(u64),
}

impl Token {
    const SHIFT: u32 = 56;

    pub fn encode(self) -> u64 {
        let (kind, v) = match self {
            Token::ListenUdp(i) => (1, i as u64),
            Token::ListenTcp(i) => (2, i as u64),
            Token::Client(c) => (3, c),
            Token::Upstream(u) => (4, u),
        };
        (kind << Self::SHIFT) | (v & ((1 << Self::SHIFT) - 1))
    }

    pub fn decode(t: u64) -> Option<Token> {
        let v = t & ((1 << Self::SHIFT) - 1);
        Some(match t >> Self::SHIFT {
            1 => Token::ListenUdp(v as usize),
            2 => Token::ListenTcp(v as usize),
            3 => Token::Client(v),
            4 => Token::Upstream(v),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::ListenUdp(0),
            Token::ListenTcp(1),
            Token::Client(7),
            Token::Upstream((1 << 56) - 1),
        ] {
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }
}
