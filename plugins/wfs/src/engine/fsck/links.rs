//! The item checks of one tree, fed its items in key order. Keys sort by (inode, kind,
//! tail), so every item of an inode comes in one run: what relates items of one inode (a
//! name entry and its index entry, extents that must not overlap, the block count) is
//! checked when its run ends, with memory for one directory. What relates inodes to each
//! other (link counts, a directory named once and in its recorded parent, an entry's type
//! against its target's) is tallied in a small summary per inode and checked at the end.

use std::collections::{HashMap, HashSet};

use crate::engine::format::{self, Dirent, Inode, ROOT_INO, S_IFDIR, kind};

/// What the checks need of an inode, kept for the whole tree: a few dozen bytes each.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// The parent a directory records.
    parent: u64,
    nlink: u32,
    /// Entries that name it (with the right type).
    names: u32,
    /// Entries in it that name a directory.
    subdirs: u32,
    /// `mode >> 12` as an entry records it: the type, and the bits above if damaged.
    mode_high: u8,
    /// Whether the last entry naming this directory is in the parent it records.
    named_in_parent: bool,
}

impl Summary {
    /// The summary of `i`, named by nothing yet.
    pub fn of(i: &Inode) -> Summary {
        Summary { parent: i.parent, nlink: i.nlink, mode_high: (i.mode >> 12) as u8, ..Summary::default() }
    }

    fn is_dir(&self) -> bool {
        u32::from(self.mode_high & 0xf) << 12 == S_IFDIR
    }
}

/// The inodes of a tree, as a first walk over its leaves finds them: the last item of each
/// inode number that decodes (as a whole-tree lookup would find it).
pub type Summaries = HashMap<u64, Summary>;

/// A name entry of the run.
#[derive(Clone, Copy)]
struct Name {
    /// The index it records (none if it does not decode).
    index: Option<u64>,
    /// Whether it must have an index entry (an entry of a directory that decodes).
    indexed: bool,
}

/// The items of the inode whose run is going on.
#[derive(Default)]
struct Run {
    ino: u64,
    inode: Option<Inode>,
    /// Name entries by name.
    names: HashMap<Vec<u8>, Name>,
    /// Index entries: key tail, and the name it holds.
    indexes: HashMap<Vec<u8>, Vec<u8>>,
    /// Data blocks, and where the last extent ends.
    data_blocks: u64,
    data_end: Option<u64>,
}

impl Run {
    #[cfg(test)]
    fn held(&self) -> usize {
        self.names.len() + self.indexes.len()
    }
}

/// The item checks of one tree; problems come out without the tree's name.
pub struct Links {
    next_ino: u64,
    inodes: Summaries,
    orphans: Vec<u64>,
    run: Run,
    pub problems: Vec<String>,
}

impl Links {
    /// Checks over a tree whose inodes are `inodes`, against the superblock's next inode
    /// number.
    pub fn new(inodes: Summaries, next_ino: u64) -> Links {
        Links { next_ino, inodes, orphans: Vec::new(), run: Run::default(), problems: Vec::new() }
    }

    fn p(&mut self, s: String) {
        self.problems.push(s);
    }

    /// Items held for the run going on (for the memory test).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.run.held()
    }

    /// The next item in key order.
    pub fn item(&mut self, k: &[u8], v: &[u8]) {
        let Some((ino, kd, tail)) = format::split_key(k) else {
            self.p("an item with a short key".into());
            return;
        };
        if ino != self.run.ino {
            self.end_run();
            self.run = Run { ino, ..Run::default() };
        }
        match kd {
            kind::INODE => self.inode(ino, v),
            kind::ORPHAN => match format::tail_n(tail) {
                Some(o) => self.orphans.push(o),
                None => self.p("a bad orphan key".into()),
            },
            kind::DIRENT => self.dirent(ino, tail, v),
            kind::DIRINDEX => {
                self.run.indexes.insert(tail.to_vec(), v.to_vec());
            }
            kind::XATTR | kind::DATA => {
                if self.run.inode.is_none() {
                    self.p(format!("an item of kind {kd} for missing inode {ino}"));
                }
                if kd == kind::DATA {
                    self.data(ino, tail, v);
                }
            }
            other => self.p(format!("inode {ino}: unknown item kind {other}")),
        }
    }

    fn inode(&mut self, ino: u64, v: &[u8]) {
        match Inode::decode(v) {
            Ok(i) => {
                if ino >= self.next_ino || ino == 0 {
                    self.p(format!("inode {ino} is beyond the next inode number {}", self.next_ino));
                }
                // INODE sorts first of an inode's kinds, so the run's other items see it.
                self.run.inode = Some(i);
            }
            Err(e) => self.p(format!("inode {ino}: {e}")),
        }
    }

    fn dirent(&mut self, ino: u64, name: &[u8], v: &[u8]) {
        let decoded = Dirent::decode(v);
        // The index entry's check looks for this entry whatever its directory is.
        let index = decoded.as_ref().ok().map(|d| d.index);
        self.run.names.insert(name.to_vec(), Name { index, indexed: false });
        let shown = String::from_utf8_lossy(name);
        let Some(next_index) = self.run.inode.as_ref().filter(|i| i.is_dir()).map(|i| i.next_index) else {
            self.p(format!("entry {shown:?} in {ino}, which is not a directory"));
            return;
        };
        let d = match decoded {
            Ok(d) => d,
            Err(e) => return self.p(format!("directory {ino}: {e}")),
        };
        self.name_target(ino, &shown, &d);
        if let Some(n) = self.run.names.get_mut(name) {
            n.indexed = true;
        }
        if d.index >= next_index {
            self.p(format!("entry {shown:?} in directory {ino} has an index beyond the next one"));
        }
    }

    /// Counts an entry of directory `dir` toward the inode it names.
    fn name_target(&mut self, dir: u64, shown: &str, d: &Dirent) {
        let Some(t) = self.inodes.get_mut(&d.ino) else {
            return self.p(format!("entry {shown:?} in directory {dir} names missing inode {}", d.ino));
        };
        if t.mode_high != d.kind {
            return self.p(format!("entry {shown:?} in directory {dir}: type differs from inode {}", d.ino));
        }
        let named_before = t.names > 0;
        t.names += 1;
        if !t.is_dir() {
            return;
        }
        t.named_in_parent = t.parent == dir;
        if let Some(owner) = self.inodes.get_mut(&dir) {
            owner.subdirs += 1;
        }
        if named_before {
            self.p(format!("directory {} has more than one name", d.ino));
        }
    }

    fn data(&mut self, ino: u64, tail: &[u8], v: &[u8]) {
        // Extents of one file in key order may not overlap.
        match (format::tail_n(tail), format::decode_data(v)) {
            (Some(start), Ok(e)) => {
                if self.run.data_end.is_some_and(|end| start < end) {
                    self.p(format!("inode {ino}: extents overlap at file block {start}"));
                }
                self.run.data_end = Some(start.saturating_add(e.len()));
                self.run.data_blocks += e.len();
            }
            _ => self.p(format!("inode {ino}: a bad data item")),
        }
    }

    /// Checks what relates the items of the run that ends.
    fn end_run(&mut self) {
        let run = std::mem::take(&mut self.run);
        let ino = run.ino;
        for (name, n) in run.names.iter().filter(|(_, n)| n.indexed) {
            let index = n.index.map(u64::to_be_bytes).unwrap_or_default();
            if run.indexes.get(index.as_slice()) != Some(name) {
                let shown = String::from_utf8_lossy(name);
                self.p(format!("entry {shown:?} in directory {ino} has no matching index"));
            }
        }
        for (tail, name) in &run.indexes {
            let matches = run.names.get(name).is_some_and(|n| n.index.is_some() && n.index == format::tail_n(tail));
            if !matches {
                self.p(format!("directory {ino}: an index entry without its name entry"));
            }
        }
        if let Some(i) = &run.inode
            && run.data_blocks != i.blocks
        {
            self.p(format!("inode {ino} counts {} blocks but has {}", i.blocks, run.data_blocks));
        }
    }

    /// Checks what relates inodes to each other, once every item has been seen.
    pub fn finish(mut self) -> Vec<String> {
        self.end_run();
        let orphans: HashSet<u64> = self.orphans.iter().copied().collect();
        let mut found = std::mem::take(&mut self.problems);
        for (&ino, s) in &self.inodes {
            check_counts(ino, s, orphans.contains(&ino), &mut found);
        }
        if !self.inodes.get(&ROOT_INO).is_some_and(Summary::is_dir) {
            found.push("the root directory is missing".into());
        }
        for o in &self.orphans {
            if self.inodes.get(o).is_none_or(|s| s.nlink != 0) {
                found.push(format!("orphan {o} is not an unlinked inode"));
            }
        }
        found
    }
}

/// An inode's link count against the entries that name it (and, for a directory, the
/// directories in it).
fn check_counts(ino: u64, s: &Summary, orphan: bool, found: &mut Vec<String>) {
    if s.is_dir() {
        let expect = if s.nlink == 0 { 0 } else { 2 + s.subdirs };
        if s.nlink != expect {
            found.push(format!("directory {ino} has link count {} but {expect} links", s.nlink));
        }
        if ino != ROOT_INO && s.nlink > 0 && !s.named_in_parent {
            found.push(format!("directory {ino} records parent {} but is not named there", s.parent));
        }
        if ino != ROOT_INO && s.names == 0 && !orphan {
            found.push(format!("directory {ino} has no name"));
        }
    } else {
        if s.nlink != s.names {
            found.push(format!("inode {ino} has link count {} but {} names", s.nlink, s.names));
        }
        if s.names == 0 && !orphan {
            found.push(format!("inode {ino} has no name and is not an orphan"));
        }
    }
}
