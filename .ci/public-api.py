#!/usr/bin/env python3
"""Prints a crate's public API, one item per line, from rustdoc's JSON output.

Usage: public-api.py CRATE.json > api.txt

Every item reachable from the crate root is listed under the path users name it by, with
its signature: functions and methods with their parameters and return type, struct fields,
enum variants, trait methods, and the traits each type implements explicitly. Auto traits,
blanket impls and private items are left out. The listing is sorted, so a diff of two
listings shows exactly what changed in the API.
"""
import json
import sys

d = json.load(open(sys.argv[1]))
if not 50 <= d.get("format_version", 0) <= 80:
    sys.exit(f"public-api.py: rustdoc JSON format {d.get('format_version')} is not one this script reads")
index = d["index"]
paths = d["paths"]
out = set()


def ty(t):
    """Renders a type."""
    if t is None:
        return "()"
    (k, v), = t.items()
    if k == "resolved_path":
        return canonical(v) + args(v.get("args"))
    if k == "generic":
        return v
    if k == "primitive":
        return v
    if k == "borrowed_ref":
        lt = (v["lifetime"] + " ") if v.get("lifetime") else ""
        return "&" + lt + ("mut " if v["is_mutable"] else "") + ty(v["type"])
    if k == "tuple":
        return "(" + ", ".join(ty(x) for x in v) + ")"
    if k == "slice":
        return "[" + ty(v) + "]"
    if k == "array":
        return "[" + ty(v["type"]) + "; " + str(v["len"]) + "]"
    if k == "raw_pointer":
        return "*" + ("mut " if v["is_mutable"] else "const ") + ty(v["type"])
    if k == "impl_trait":
        return "impl " + " + ".join(bound(b) for b in v)
    if k == "dyn_trait":
        parts = [poly(p) for p in v["traits"]]
        if v.get("lifetime"):
            parts.append(v["lifetime"])
        return "dyn " + " + ".join(parts)
    if k == "qualified_path":
        tr = v.get("trait")
        if tr and tr.get("path"):
            return "<" + ty(v["self_type"]) + " as " + tr["path"] + args(tr.get("args")) + ">::" + v["name"]
        return ty(v["self_type"]) + "::" + v["name"]
    if k == "function_pointer":
        sig = v["sig"]
        return "fn(" + ", ".join(ty(i[1]) for i in sig["inputs"]) + ")" + ret(sig.get("output"))
    if k == "infer":
        return "_"
    return "<" + k + ">"


def canonical(v):
    """For this crate's items, the path the item is defined at (independent of how the source
    imported it); for other crates' items, the path as the source wrote it (the standard
    library's internal module paths change between Rust releases)."""
    known = paths.get(str(v.get("id")))
    if known and known.get("crate_id") == 0 and known.get("path"):
        return "::".join(known["path"])
    return v["path"]


def args(a):
    if not a:
        return ""
    if "angle_bracketed" in a:
        ab = a["angle_bracketed"]
        parts = []
        for x in ab["args"]:
            (k, v), = x.items() if isinstance(x, dict) else (("other", x),)
            parts.append(ty(v) if k == "type" else (v if isinstance(v, str) else json.dumps(v)))
        for c in ab.get("constraints", []):
            b = c.get("binding", {})
            if "equality" in b:
                val = b["equality"]
                parts.append(c["name"] + " = " + (ty(val["type"]) if "type" in val else str(val)))
            else:
                parts.append(c["name"] + ": " + " + ".join(bound(x) for x in b.get("constraint", [])))
        return "<" + ", ".join(parts) + ">" if parts else ""
    if "parenthesized" in a:
        p = a["parenthesized"]
        return "(" + ", ".join(ty(x) for x in p["inputs"]) + ")" + ret(p.get("output"))
    return ""


def poly(p):
    return canonical(p["trait"]) + args(p["trait"].get("args"))


def bound(b):
    if "trait_bound" in b:
        tb = b["trait_bound"]
        m = {"none": "", "maybe": "?", "maybe_const": "~const "}.get(tb.get("modifier", "none"), "")
        return m + canonical(tb["trait"]) + args(tb["trait"].get("args"))
    if "outlives" in b:
        return b["outlives"]
    if "use" in b:
        return "use<" + ", ".join(str(x) for x in b["use"]) + ">"
    return str(b)


def ret(o):
    return "" if o is None else " -> " + ty(o)


def generics(g):
    ps = []
    for p in g.get("params", []):
        kind = p["kind"]
        if "lifetime" in kind:
            ps.append(p["name"])
        elif "type" in kind:
            if kind["type"].get("is_synthetic"):
                continue
            bs = kind["type"].get("bounds", [])
            ps.append(p["name"] + (": " + " + ".join(bound(b) for b in bs) if bs else ""))
        elif "const" in kind:
            ps.append("const " + p["name"] + ": " + ty(kind["const"]["type"]))
    s = "<" + ", ".join(ps) + ">" if ps else ""
    preds = []
    for w in g.get("where_predicates", []):
        if "bound_predicate" in w:
            bp = w["bound_predicate"]
            preds.append(ty(bp["type"]) + ": " + " + ".join(bound(b) for b in bp["bounds"]))
    if preds:
        s += " where " + ", ".join(preds)
    return s


def fn_sig(name, f):
    h = f["header"]
    pre = ("const " if h.get("is_const") else "") + ("async " if h.get("is_async") else "") + ("unsafe " if h.get("is_unsafe") else "")
    g = f["generics"]
    params = []
    for n, t in f["sig"]["inputs"]:
        if n == "self":
            params.append({"generic": "Self"} == t and "self" or ("&self" if t == {"borrowed_ref": {"lifetime": None, "is_mutable": False, "type": {"generic": "Self"}}} else ("&mut self" if t == {"borrowed_ref": {"lifetime": None, "is_mutable": True, "type": {"generic": "Self"}}} else "self: " + ty(t))))
        else:
            params.append(n + ": " + ty(t))
    gs = generics(g)
    where = ""
    if " where " in gs:
        gs, where = gs.split(" where ", 1)
        where = " where " + where
    return pre + "fn " + name + gs + "(" + ", ".join(params) + ")" + ret(f["sig"].get("output")) + where


def attrs(item):
    a = item.get("attrs", [])
    return " #[non_exhaustive]" if any("non_exhaustive" in json.dumps(x) for x in a) else ""


def impls_of(path, ids):
    for i in ids:
        imp = index.get(str(i))
        if not imp:
            continue
        im = imp["inner"]["impl"]
        if im.get("is_synthetic") or im.get("blanket_impl"):
            continue
        tr = im.get("trait")
        if tr is None:
            for m in im["items"]:
                mi = index.get(str(m))
                if not mi or mi.get("visibility") != "public":
                    continue
                if "function" in mi["inner"]:
                    out.add(fn_sig(path + "::" + mi["name"], mi["inner"]["function"]))
                elif "assoc_const" in mi["inner"]:
                    out.add(path + "::const " + mi["name"] + ": " + ty(mi["inner"]["assoc_const"]["type"]))
        else:
            neg = "!" if im.get("is_negative") else ""
            out.add("impl" + generics(im["generics"]).split(" where ")[0] + " " + neg + canonical(tr) + args(tr.get("args")) + " for " + ty(im["for"]))


def walk(item_id, path, seen):
    item = index.get(str(item_id))
    if item is None or item_id in seen:
        return
    seen = seen | {item_id}
    inner = item["inner"]
    (kind, v), = inner.items()
    if kind == "use":
        if v.get("is_glob"):
            target = index.get(str(v.get("id")))
            if target and "module" in target["inner"]:
                for c in target["inner"]["module"]["items"]:
                    walk(c, path, seen)
            else:
                out.add(path + "::* (re-export of " + v["source"] + "::*)")
            return
        name = v["name"]
        if v.get("id") is not None and str(v["id"]) in index:
            walk_named(v["id"], path + "::" + name, seen)
        else:
            out.add(path + "::" + name + " (re-export of " + v["source"] + ")")
        return
    if item.get("visibility") != "public":
        return
    walk_named(item_id, path + "::" + item["name"], seen)


def walk_named(item_id, p, seen):
    item = index[str(item_id)]
    (kind, v), = item["inner"].items()
    if kind == "module":
        out.add("mod " + p)
        for c in v["items"]:
            walk(c, p, seen | {item_id})
    elif kind == "struct":
        out.add("struct " + p + generics(v["generics"]) + attrs(item))
        k = v["kind"]
        fields = k.get("plain", {}).get("fields", []) if isinstance(k, dict) else []
        if isinstance(k, dict) and "tuple" in k:
            fields = [f for f in k["tuple"] if f is not None]
        for f in fields:
            fi = index.get(str(f))
            if fi and fi.get("visibility") == "public":
                out.add(p + "." + fi["name"] + ": " + ty(fi["inner"]["struct_field"]))
        impls_of(p, v["impls"])
    elif kind == "enum":
        out.add("enum " + p + generics(v["generics"]) + attrs(item))
        for var in v["variants"]:
            vi = index[str(var)]
            vk = vi["inner"]["variant"]["kind"]
            if vk == "plain":
                out.add(p + "::" + vi["name"])
            elif "tuple" in vk:
                out.add(p + "::" + vi["name"] + "(" + ", ".join(ty(index[str(f)]["inner"]["struct_field"]) for f in vk["tuple"] if f is not None) + ")")
            else:
                fs = [index[str(f)] for f in vk["struct"]["fields"]]
                out.add(p + "::" + vi["name"] + " { " + ", ".join(f["name"] + ": " + ty(f["inner"]["struct_field"]) for f in fs) + " }" + attrs(vi))
        impls_of(p, v["impls"])
    elif kind == "union":
        out.add("union " + p)
    elif kind == "function":
        out.add(fn_sig(p, v))
    elif kind == "trait":
        bounds = v.get("bounds", [])
        out.add("trait " + p + generics(v["generics"]) + (": " + " + ".join(bound(b) for b in bounds) if bounds else ""))
        for m in v["items"]:
            mi = index[str(m)]
            (mk, mv), = mi["inner"].items()
            if mk == "function":
                out.add(fn_sig(p + "::" + mi["name"], mv) + (" {provided}" if mv.get("has_body") else ""))
            elif mk == "assoc_type":
                bs = mv.get("bounds", [])
                out.add(p + "::type " + mi["name"] + (": " + " + ".join(bound(b) for b in bs) if bs else ""))
            elif mk == "assoc_const":
                out.add(p + "::const " + mi["name"] + ": " + ty(mv["type"]))
    elif kind == "type_alias":
        out.add("type " + p + generics(v["generics"]) + " = " + ty(v["type"]))
    elif kind == "constant":
        out.add("const " + p + ": " + ty(v["type"]))
    elif kind == "static":
        out.add("static " + p + ": " + ty(v["type"]))
    elif kind in ("macro", "proc_macro"):
        out.add("macro " + p + "!")
    else:
        out.add(kind + " " + p)


root = index[str(d["root"])]
name = root["name"]
out.add("mod " + name)
for c in root["inner"]["module"]["items"]:
    walk(c, name, {d["root"]})
print("\n".join(sorted(out)))
