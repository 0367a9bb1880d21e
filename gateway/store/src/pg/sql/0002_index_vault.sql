-- Ward's shared state, part 2: the session index and the vault (pgindex fills this in).
SELECT 1;
