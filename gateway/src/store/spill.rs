//! The spill file: outcome rows that could not be written to the database yet, as JSON lines
//! in the order they were spilled.
//!
//! Appends are whole lines written under the writer's lock and synced before the lock is
//! released, so everything below [`SpillFile::len`] is complete lines. The file is removed
//! once everything in it has been replayed, so a healthy gateway leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::LogRow;

pub(super) struct SpillFile {
    path: PathBuf,
    /// Opened (and the file created) at the first append.
    appender: Option<File>,
    /// Bytes of complete lines in the file.
    len: u64,
}

impl SpillFile {
    /// Opens what an earlier run may have left. A last line cut short by a crash is closed
    /// with a newline so that the next append does not run into it (the replay then skips
    /// it as unreadable, and counts it).
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut spill = Self {
            path: path.to_owned(),
            appender: None,
            len: 0,
        };
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() > 0 => {
                let mut file = OpenOptions::new().read(true).append(true).open(path)?;
                file.seek(SeekFrom::End(-1))?;
                let mut last = [0u8; 1];
                file.read_exact(&mut last)?;
                if last[0] != b'\n' {
                    file.write_all(b"\n")?;
                    file.sync_data()?;
                }
                spill.len = file.metadata()?.len();
                spill.appender = Some(file);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(spill)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes waiting to be replayed (and already replayed, until the file is emptied).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends rows as JSON lines and syncs them to disk.
    pub fn append(&mut self, rows: &[LogRow]) -> io::Result<()> {
        let mut buffer = Vec::with_capacity(rows.len() * 512);
        for row in rows {
            serde_json::to_writer(&mut buffer, row)?;
            buffer.push(b'\n');
        }
        let file = match &mut self.appender {
            Some(file) => file,
            None => {
                if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)?;
                }
                let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
                self.len = file.metadata()?.len();
                self.appender.insert(file)
            }
        };
        let written = file.write_all(&buffer).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Cut a partial line off, so that the next append starts on a line of its own.
            let _ = file.set_len(self.len);
            return Err(e);
        }
        self.len += buffer.len() as u64;
        Ok(())
    }

    /// Removes the file when everything in it up to `consumed` has been replayed.
    pub fn remove_if_consumed(&mut self, consumed: u64) -> io::Result<bool> {
        if consumed < self.len {
            return Ok(false);
        }
        self.appender = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.len = 0;
        Ok(true)
    }
}

/// Rows read back from the spill file.
pub(super) struct Chunk {
    pub rows: Vec<LogRow>,
    /// Offset just after the last line read.
    pub next_offset: u64,
    /// Lines that could not be parsed (a crash mid-write); they are skipped.
    pub unreadable: u64,
}

/// Reads up to `max` rows starting at `offset`, never past `end` (the length the appender
/// reported, so only complete lines are read).
pub(super) fn read_chunk(path: &Path, offset: u64, end: u64, max: usize) -> io::Result<Chunk> {
    let mut chunk = Chunk {
        rows: Vec::new(),
        next_offset: offset,
        unreadable: 0,
    };
    if offset >= end {
        return Ok(chunk);
    }
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(1 << 20, file.take(end - offset));
    let mut line = Vec::new();
    while chunk.rows.len() < max {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        chunk.next_offset += read as u64;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<LogRow>(text) {
            Ok(row) => chunk.rows.push(row),
            Err(error) => {
                tracing::error!(%error, offset = chunk.next_offset, path = %path.display(), "unreadable line in the spill file, skipped");
                chunk.unreadable += 1;
            }
        }
    }
    Ok(chunk)
}
