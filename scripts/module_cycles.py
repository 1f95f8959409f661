#!/usr/bin/env python3
"""Module dependency cycles inside each crate of the workspace (`make lint` fails on one).

An edge is a `crate::a::b` or `super::a` path in a module's code (comments and unit-test
modules left out); a cycle is printed as a -> b -> a."""
import os, re, sys, itertools
root = sys.argv[1]
crates = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, 'Cargo.toml')) and os.path.isdir(os.path.join(root, d, 'src')))
def modname(crate_src, path):
    rel = os.path.relpath(path, crate_src)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ('mod','lib','main'): parts = parts[:-1]
    return '::'.join(parts) or '<root>'
total = 0
for c in crates:
    src = os.path.join(root, c, 'src')
    mods = {}
    for d,_,fs in os.walk(src):
        for f in fs:
            if f.endswith('.rs'):
                p=os.path.join(d,f); mods[modname(src,p)] = open(p).read()
    graph = {m:set() for m in mods}
    for m, text in mods.items():
        text = re.sub(r'#\[cfg\(test\)\]\s*mod tests \{.*', '', text, flags=re.S)
        text = re.sub(r'//.*', '', text)
        for ref in re.findall(r'crate::([a-z_]+(?:::[a-z_]+)*)', text):
            parts = ref.split('::')
            # longest known module prefix
            for k in range(len(parts),0,-1):
                cand='::'.join(parts[:k])
                if cand in mods: 
                    if cand!=m and not m.startswith(cand+'::') and not cand.startswith(m+'::'): graph[m].add(cand)
                    break
        base = m.split('::')[:-1]
        for ref in re.findall(r'\bsuper::([a-z_]+)', text):
            cand='::'.join(base+[ref]) if base else ref
            if cand in mods and cand!=m: graph[m].add(cand)
    # find cycles via DFS
    color={}; stack=[]; found=[]
    def dfs(u):
        color[u]=1; stack.append(u)
        for v in sorted(graph[u]):
            if color.get(v)==1: found.append(stack[stack.index(v):]+[v])
            elif not color.get(v): dfs(v)
        stack.pop(); color[u]=2
    for m in sorted(graph):
        if not color.get(m): dfs(m)
    print(f"{c}: {len(mods)} modules, {sum(len(v) for v in graph.values())} edges, {len(found)} cycles" + ''.join('\n  '+' -> '.join(f) for f in found))
    total += len(found)
print("cycles in all:", total)
sys.exit(1 if total else 0)
