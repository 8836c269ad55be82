//! A pickle reader for what `torch.save` writes for tensors and dicts, and nothing else.
//!
//! Python's unpickler calls whatever a pickle names; this one calls nothing. It knows the
//! opcodes of protocols 2 to 5 that build plain data (None, bools, ints, floats, strings,
//! tuples, lists, dicts, the memo), the persistent ids that name `torch.save`'s storages, and
//! four globals: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the storage classes (`torch.FloatStorage`, ...).
//! Any other global or opcode is refused where it appears, naming it.
//!
//! Every object lives in one arena and values refer to it by index, so the memo, `BINGET` and
//! nested containers copy nothing: memory grows by at most one object per opcode read, and a
//! pickle that references one object a million times costs a million small values, not a
//! million copies.

use std::collections::HashMap;
use std::path::Path;

use super::tensor::Dtype;
use crate::{Error, Result};

/// A value on the stack, in the memo or in a container. Everything larger than a number is an
/// index into [`Pickle::objects`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Object(usize),
}

#[derive(Debug)]
pub enum Object {
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict or an OrderedDict, in insertion order.
    Dict(Vec<(Value, Value)>),
    Global(Global),
    /// `('storage', torch.XStorage, key, location, numel)`: the record `data/{key}` holds it.
    Storage {
        key: String,
        dtype: Dtype,
        numel: usize,
    },
    Tensor(TensorRecord),
}

/// The only globals a checkpoint may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    StorageClass(Dtype),
}

/// A tensor as `_rebuild_tensor_v2` describes it; its bytes are checked when it is read.
#[derive(Clone, Debug)]
pub struct TensorRecord {
    /// The index of its [`Object::Storage`].
    pub storage: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    /// PyTorch's negative bit: the stored values are to be negated.
    pub negated: bool,
    /// Tensor metadata gptc does not honour (e.g. the conjugate bit): refused if it is read.
    pub unsupported: Option<String>,
}

/// A whole pickle: its objects and the value `STOP` returned.
#[derive(Debug)]
pub struct Pickle {
    pub objects: Vec<Object>,
    pub root: Value,
}

impl Pickle {
    pub fn object(&self, value: Value) -> Option<&Object> {
        match value {
            Value::Object(id) => self.objects.get(id),
            _ => None,
        }
    }

    pub fn str(&self, value: Value) -> Option<&str> {
        match self.object(value) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// What a value is, for messages.
    pub fn describe(&self, value: Value) -> &'static str {
        match value {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Object(_) => match self.object(value) {
                Some(Object::Str(_)) => "a string",
                Some(Object::Tuple(_)) => "a tuple",
                Some(Object::List(_)) => "a list",
                Some(Object::Dict(_)) => "a dict",
                Some(Object::Global(_)) => "a global",
                Some(Object::Storage { .. }) => "a storage",
                Some(Object::Tensor(_)) => "a tensor",
                None => "nothing",
            },
        }
    }
}

/// Reads `data` (an archive's `data.pkl`); `path` names the file in errors.
pub fn load(path: &Path, data: &[u8]) -> Result<Pickle> {
    Unpickler {
        path,
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
    }
    .run()
}

struct Unpickler<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
}

/// Opcodes by their byte (Python's `pickletools` names).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const TUPLE: u8 = b't';
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const LIST: u8 = b'l';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const DICT: u8 = b'd';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
}

/// Names of the opcodes this reader refuses, for the message.
fn refused_opcode_name(code: u8) -> &'static str {
    match code {
        b'i' => "INST (builds an instance of a named class)",
        b'o' => "OBJ (builds an instance of a class)",
        0x81 => "NEWOBJ (builds an instance of a class)",
        0x92 => "NEWOBJ_EX (builds an instance of a class)",
        b'P' => "PERSID",
        0x82..=0x84 => "EXT (a registered global)",
        b'B' | b'C' | 0x8e => "BINBYTES",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        b'I' | b'L' | b'F' | b'S' | b'V' | b'U' | b'T' | b'g' | b'p' => {
            "a text opcode of protocol 0 or 1"
        }
        b'2' => "DUP",
        _ => "unknown",
    }
}

impl Unpickler<'_> {
    fn refuse(&self, reason: String) -> Error {
        Error::Checkpoint { path: self.path.into(), reason }
    }

    fn truncated(&self) -> Error {
        self.refuse(format!("its pickle (data.pkl) ends inside an opcode at byte {}", self.pos))
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        let end = end.ok_or_else(|| self.truncated())?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Up to the next newline (GLOBAL's two arguments).
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let len = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.truncated())?;
        let text = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.pos += len + 1;
        Ok(text)
    }

    fn text(&mut self, len: u64) -> Result<Value> {
        let len = usize::try_from(len).map_err(|_| self.truncated())?;
        let at = self.pos;
        let bytes = self.bytes(len)?.to_vec();
        let text = String::from_utf8(bytes).map_err(|_| {
            self.refuse(format!("its pickle has a string that is not UTF-8 at byte {at}"))
        })?;
        Ok(self.new_object(Object::Str(text)))
    }

    fn new_object(&mut self, object: Object) -> Value {
        self.objects.push(object);
        Value::Object(self.objects.len() - 1)
    }

    fn pop(&mut self) -> Result<Value> {
        // A MARK above the top means the stack was emptied past it.
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.malformed("pops past a MARK"));
        }
        self.stack.pop().ok_or_else(|| self.malformed("pops an empty stack"))
    }

    fn top(&self) -> Result<Value> {
        self.stack.last().copied().ok_or_else(|| self.malformed("reads an empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("has no MARK to pop"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("pops past a MARK"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn malformed(&self, what: &str) -> Error {
        self.refuse(format!("its pickle (data.pkl) {what} at byte {}", self.pos))
    }

    fn object_mut(&mut self, value: Value) -> Option<&mut Object> {
        match value {
            Value::Object(id) => self.objects.get_mut(id),
            _ => None,
        }
    }

    fn int(&self, value: Value, what: &str) -> Result<usize> {
        match value {
            Value::Int(i) if i >= 0 => Ok(i as usize),
            _ => Err(self.malformed(&format!("gives {what} that is not a non-negative int"))),
        }
    }

    fn ints(&self, value: Value, what: &str) -> Result<Vec<usize>> {
        match self.objects_of(value) {
            Some(Object::Tuple(items)) => items.iter().map(|&v| self.int(v, what)).collect(),
            _ => Err(self.malformed(&format!("gives {what} that is not a tuple of ints"))),
        }
    }

    fn objects_of(&self, value: Value) -> Option<&Object> {
        match value {
            Value::Object(id) => self.objects.get(id),
            _ => None,
        }
    }

    fn global(&self, module: &str, name: &str) -> Result<Global> {
        let global = match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", class) => Dtype::of_storage_class(class).map(Global::StorageClass),
            _ => None,
        };
        global.ok_or_else(|| {
            // A class of the user's own code: the whole module was pickled, not its state dict.
            let hint = if module == "__main__" || name.starts_with(char::is_uppercase) {
                "; a whole pickled model (`torch.save(model)`) is refused too: save `model.state_dict()`"
            } else {
                ""
            };
            let (module, name) = (module.escape_debug(), name.escape_debug());
            self.refuse(format!(
                "its pickle names the global `{module}.{name}`, which torch.save does not write for tensors and dicts: gptc runs no code from a checkpoint{hint}"
            ))
        })
    }

    fn run(mut self) -> Result<Pickle> {
        loop {
            let at = self.pos;
            let [code] = self.array::<1>()?;
            match code {
                op::PROTO => {
                    let [version] = self.array::<1>()?;
                    if !(2..=5).contains(&version) {
                        return Err(self.refuse(format!(
                            "its pickle is protocol {version}; torch.save writes 2 (up to 5 when asked)"
                        )));
                    }
                }
                op::FRAME => {
                    self.array::<8>()?;
                }
                op::STOP => {
                    let root = self.pop()?;
                    return Ok(Pickle { objects: self.objects, root });
                }
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    self.pop()?;
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::NONE => self.stack.push(Value::None),
                op::NEWTRUE => self.stack.push(Value::Bool(true)),
                op::NEWFALSE => self.stack.push(Value::Bool(false)),
                op::BININT => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v as i64));
                }
                op::BININT1 => {
                    let [v] = self.array::<1>()?;
                    self.stack.push(Value::Int(v as i64));
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v as i64));
                }
                op::LONG1 => {
                    let [n] = self.array::<1>()?;
                    if n > 8 {
                        return Err(self.malformed(&format!("has an int of {n} bytes")));
                    }
                    let bytes = self.bytes(n as usize)?;
                    // Little-endian two's complement, sign-extended from its last byte.
                    let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
                    let mut full = [fill; 8];
                    full[..bytes.len()].copy_from_slice(bytes);
                    self.stack.push(Value::Int(i64::from_le_bytes(full)));
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.stack.push(Value::Float(v));
                }
                op::BINUNICODE => {
                    let len = u32::from_le_bytes(self.array()?);
                    let v = self.text(len as u64)?;
                    self.stack.push(v);
                }
                op::SHORT_BINUNICODE => {
                    let [len] = self.array::<1>()?;
                    let v = self.text(len as u64)?;
                    self.stack.push(v);
                }
                op::BINUNICODE8 => {
                    let len = u64::from_le_bytes(self.array()?);
                    let v = self.text(len)?;
                    self.stack.push(v);
                }
                op::EMPTY_TUPLE => {
                    let v = self.new_object(Object::Tuple(Vec::new()));
                    self.stack.push(v);
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = (code - op::TUPLE1 + 1) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.new_object(Object::Tuple(items));
                    self.stack.push(v);
                }
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    let v = self.new_object(Object::Tuple(items));
                    self.stack.push(v);
                }
                op::EMPTY_LIST => {
                    let v = self.new_object(Object::List(Vec::new()));
                    self.stack.push(v);
                }
                op::LIST => {
                    let items = self.pop_mark()?;
                    let v = self.new_object(Object::List(items));
                    self.stack.push(v);
                }
                op::APPEND | op::APPENDS => {
                    let items = if code == op::APPEND { vec![self.pop()?] } else { self.pop_mark()? };
                    let list = self.top()?;
                    match self.object_mut(list) {
                        Some(Object::List(existing)) => existing.extend(items),
                        _ => return Err(self.malformed("appends to something that is not a list")),
                    }
                }
                op::EMPTY_DICT => {
                    let v = self.new_object(Object::Dict(Vec::new()));
                    self.stack.push(v);
                }
                op::DICT | op::SETITEM | op::SETITEMS => {
                    let items = if code == op::SETITEM {
                        let value = self.pop()?;
                        vec![self.pop()?, value]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err(self.malformed("sets a key without a value"));
                    }
                    let pairs = items.chunks_exact(2).map(|kv| (kv[0], kv[1]));
                    if code == op::DICT {
                        let v = self.new_object(Object::Dict(pairs.collect()));
                        self.stack.push(v);
                    } else {
                        let dict = self.top()?;
                        match self.object_mut(dict) {
                            Some(Object::Dict(existing)) => existing.extend(pairs),
                            _ => return Err(self.malformed("sets an item of something that is not a dict")),
                        }
                    }
                }
                op::BINPUT | op::LONG_BINPUT | op::MEMOIZE => {
                    let index = match code {
                        op::BINPUT => self.array::<1>()?[0] as u32,
                        op::LONG_BINPUT => u32::from_le_bytes(self.array()?),
                        _ => self.memo.len() as u32,
                    };
                    let top = self.top()?;
                    self.memo.insert(index, top);
                }
                op::BINGET | op::LONG_BINGET => {
                    let index = match code {
                        op::BINGET => self.array::<1>()?[0] as u32,
                        _ => u32::from_le_bytes(self.array()?),
                    };
                    let value = self.memo.get(&index).copied();
                    let value = value.ok_or_else(|| self.malformed(&format!("reads memo {index}, never written")))?;
                    self.stack.push(value);
                }
                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = self.global(&module, &name)?;
                    let v = self.new_object(Object::Global(global));
                    self.stack.push(v);
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (module, name) = match (self.objects_of(module), self.objects_of(name)) {
                        (Some(Object::Str(m)), Some(Object::Str(n))) => (m.clone(), n.clone()),
                        _ => return Err(self.malformed("names a global with something not a string")),
                    };
                    let global = self.global(&module, &name)?;
                    let v = self.new_object(Object::Global(global));
                    self.stack.push(v);
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v);
                }
                op::BUILD => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    // An OrderedDict's attributes (a state dict's `_metadata`: module versions)
                    // say nothing about the tensors; nothing else is built.
                    let is_dict = |v| matches!(self.objects_of(v), Some(Object::Dict(_)));
                    if !(is_dict(target) && (state == Value::None || is_dict(state))) {
                        return Err(self.malformed("sets the state of something that is not an OrderedDict"));
                    }
                }
                op::BINPERSID => {
                    let id = self.pop()?;
                    let v = self.storage(id)?;
                    self.stack.push(v);
                }
                other => {
                    return Err(self.refuse(format!(
                        "its pickle has opcode {other:#04x} ({}) at byte {at}, which torch.save does not write for tensors and dicts",
                        refused_opcode_name(other)
                    )))
                }
            }
        }
    }

    /// `('storage', torch.XStorage, key, location, numel)`, as torch.save's `persistent_id`
    /// writes it.
    fn storage(&mut self, id: Value) -> Result<Value> {
        let fields = match self.objects_of(id) {
            Some(Object::Tuple(fields)) if fields.len() == 5 => fields.clone(),
            _ => return Err(self.malformed("has a persistent id that is not a storage")),
        };
        let tag = self.objects_of(fields[0]);
        let class = self.objects_of(fields[1]);
        let key = self.objects_of(fields[2]);
        let (dtype, key) = match (tag, class, key) {
            (
                Some(Object::Str(tag)),
                Some(Object::Global(Global::StorageClass(dtype))),
                Some(Object::Str(key)),
            ) if tag == "storage" => (*dtype, key.clone()),
            _ => return Err(self.malformed("has a persistent id that is not a storage")),
        };
        // Keys are record names inside the archive: torch writes decimal numbers.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(self.malformed(&format!("names the storage `{key}`")));
        }
        let numel = self.int(fields[4], "a storage size")?;
        Ok(self.new_object(Object::Storage { key, dtype, numel }))
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value> {
        // Every call allowed takes at most 7 arguments: a longer tuple is refused uncopied.
        let args = match self.objects_of(args) {
            Some(Object::Tuple(args)) if args.len() <= 7 => args.clone(),
            Some(Object::Tuple(args)) => {
                return Err(self.malformed(&format!("calls with {} arguments", args.len())))
            }
            _ => return Err(self.malformed("calls with arguments that are not a tuple")),
        };
        let global = match self.objects_of(callable) {
            Some(Object::Global(global)) => *global,
            _ => return Err(self.malformed("calls something that is not a global")),
        };
        match global {
            Global::OrderedDict if args.is_empty() => Ok(self.new_object(Object::Dict(Vec::new()))),
            Global::RebuildTensorV2 if args.len() == 6 || args.len() == 7 => {
                let tensor = self.tensor(&args)?;
                Ok(self.new_object(Object::Tensor(tensor)))
            }
            Global::RebuildParameter if args.len() == 3 => match self.objects_of(args[0]) {
                Some(Object::Tensor(_)) => Ok(args[0]),
                _ => Err(self.malformed("makes a parameter of something that is not a tensor")),
            },
            Global::StorageClass(dtype) => {
                Err(self.malformed(&format!("calls the {} storage class", dtype.name())))
            }
            _ => Err(self.malformed(&format!("calls {global:?} with {} arguments", args.len()))),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    fn tensor(&self, args: &[Value]) -> Result<TensorRecord> {
        let storage = match args[0] {
            Value::Object(id) if matches!(self.objects.get(id), Some(Object::Storage { .. })) => id,
            _ => {
                return Err(self.malformed("rebuilds a tensor from something that is not a storage"))
            }
        };
        let offset = self.int(args[1], "a storage offset")?;
        let shape = self.ints(args[2], "a size")?;
        let strides = self.ints(args[3], "a stride")?;
        let mut negated = false;
        let mut unsupported = None;
        if let Some(&metadata) = args.get(6) {
            let Some(Object::Dict(entries)) = self.objects_of(metadata) else {
                return Err(self.malformed("gives tensor metadata that is not a dict"));
            };
            for &(key, value) in entries {
                match (self.objects_of(key), value) {
                    (Some(Object::Str(k)), Value::Bool(on)) if k == "neg" => negated = on,
                    (Some(Object::Str(k)), Value::Bool(false)) if k == "conj" => {}
                    (Some(Object::Str(k)), _) => {
                        unsupported = Some(format!("tensor metadata `{k}`"))
                    }
                    _ => unsupported = Some("tensor metadata".into()),
                }
            }
        }
        Ok(TensorRecord { storage, offset, shape, strides, negated, unsupported })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(bytes: &[u8]) -> Result<Pickle> {
        super::load(Path::new("t.pth"), bytes)
    }

    /// `collections.OrderedDict()` then SETITEMS of one string to a float tensor.
    fn state_dict_pickle() -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\nq\x00)R");
        p.extend(b"(X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
        p.extend(b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend(b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89h\x00)Rtq\x01R");
        p.extend(b"u.");
        p
    }

    #[test]
    fn reads_a_state_dict_as_torch_writes_it() {
        let pickle = load(&state_dict_pickle()).unwrap();
        let Some(Object::Dict(entries)) = pickle.object(pickle.root) else { panic!() };
        assert_eq!(entries.len(), 1);
        assert_eq!(pickle.str(entries[0].0), Some("w"));
        let Some(Object::Tensor(t)) = pickle.object(entries[0].1) else { panic!() };
        assert_eq!(
            (t.shape.as_slice(), t.strides.as_slice(), t.offset),
            (&[2, 3][..], &[3, 1][..], 0)
        );
        let Some(Object::Storage { key, dtype, numel }) = pickle.objects.get(t.storage) else {
            panic!()
        };
        assert_eq!((key.as_str(), *dtype, *numel), ("0", Dtype::F32, 6));
    }

    #[test]
    fn refuses_every_other_global_and_opcode_naming_it() {
        for (pickle, expected) in [
            (&b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R."[..], "`posix.system`"),
            (b"\x80\x02cbuiltins\neval\n.", "`builtins.eval`"),
            (b"\x80\x02c__main__\nGPTModel\n.", "model.state_dict()"),
            (b"\x80\x04\x8c\x02os\x8c\x06system\x93.", "`os.system`"),
            (b"\x80\x02(cos\nsystem\nX\x01\x00\x00\x00xo.", "`os.system`"),
            (b"\x80\x02(X\x01\x00\x00\x00xi__main__\nC\n.", "INST"),
            (b"\x80\x02]\x81.", "NEWOBJ"),
            (b"\x80\x02S'x'\n.", "protocol 0"),
            (b"\x80\x01.", "protocol 1"),
            (b"\x80\x02ctorch\nFloatStorage\n)R.", "calls the float32 storage class"),
        ] {
            let err = load(pickle).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn malformed_pickles_are_errors_not_panics() {
        let whole = state_dict_pickle();
        for cut in 0..whole.len() {
            assert!(load(&whole[..cut]).is_err(), "cut at {cut}");
        }
        for pickle in [
            &b"\x80\x02."[..],
            b"\x80\x02h\x05.",
            b"\x80\x02(0.",
            b"\x80\x02K\x01K\x02a.",
            b"\x80\x02}K\x01s.",
            b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
            b"\x80\x02X\xff\xff\xff\xff.",
            b"\x80\x02X\x01\x00\x00\x00\xff.",
            b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x03\x00\x00\x00../X\x03\x00\x00\x00cpuK\x06tQ.",
        ] {
            let err = load(pickle).unwrap_err().to_string();
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn shared_references_cost_no_copies() {
        // A tuple holding the previous one twice, 60 levels deep: 2^60 leaves if copied.
        let mut p = vec![0x80, 2, b'K', 1, b'q', 0];
        for _ in 0..60 {
            p.extend([b'h', 0, b'h', 0, op::TUPLE2, b'q', 0]);
        }
        p.push(b'.');
        let pickle = load(&p).unwrap();
        assert!(pickle.objects.len() <= 61);
    }

    #[test]
    fn negative_longs_and_metadata_bits_read_as_python_does() {
        let pickle = load(b"\x80\x02\x8a\x02\x00\xff.").unwrap();
        assert_eq!(pickle.root, Value::Int(-256));
        let pickle = load(b"\x80\x02\x8a\x00.").unwrap();
        assert_eq!(pickle.root, Value::Int(0));
    }
}
