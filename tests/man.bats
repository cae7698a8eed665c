#!/usr/bin/env bats
# The manual: every page lints clean, and every installed program has a
# page that is installed with it and documents every option it accepts.
# A new binary without a page, or a new option without a line in a page,
# fails here.
#
# By hand, from the build directory: tests/run-bats $top_srcdir/tests/man.bats

setup() {
	load helpers/common
	MANDIR=$top_srcdir/man
}

# A variable of the build's Makefile, as make expands it (so automake
# conditionals such as HAVE_LIBURING are already applied).  The parent
# make's jobserver flags are dropped: this is a separate, read-only make.
make_var() { # NAME
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
	    make -s --no-print-directory -C "$top_builddir" -f Makefile -f - \
	    iomodels-print-var IOMODELS_VAR="$1" <<'EOF'
iomodels-print-var:
	@echo $($(IOMODELS_VAR))
EOF
}

# The installed programs' names: bin_PROGRAMS and bin_SCRIPTS.  Without a
# usable make, the ELF executables built in src/ and asyncio/.
installed_programs() {
	local list p
	if list=$(make_var bin_PROGRAMS) && list+=" $(make_var bin_SCRIPTS)"; then
		for p in $list; do
			echo "${p##*/}"
		done
		return
	fi
	for p in "$top_builddir"/src/* "$top_builddir"/asyncio/*; do
		[[ -f $p && -x $p && $(head -c 4 "$p" | tr -d '\0') == $'\x7fELF' ]] &&
		    echo "${p##*/}"
	done
}

# Every page the source tree has: man/NAME.SECTION.
pages() {
	local f
	for f in "$MANDIR"/*.[1-9]; do
		[[ -f $f ]] && echo "$f"
	done
}

@test "man: the source tree has pages" {
	run pages
	assert_success
	assert_line --partial "/iomodels.7"
}

@test "man: every page is lint-clean (mandoc -T lint -W style)" {
	command -v mandoc >/dev/null ||
	    skip "mandoc is not installed (Debian: apt-get install mandoc)"
	local f out bad=0
	for f in $(pages); do
		# -W style catches what renders wrong but is legal mdoc, e.g. a
		# trailing comma glued to a word after .Fl ("-default -0,").
		# Left out: cross references to pages this machine has not
		# installed (or not indexed in mandoc.db): they depend on the
		# machine, not on the page.
		out=$(mandoc -T lint -W style "$f" 2>&1 |
		    grep -v -e 'STYLE: referenced manual not found' \
			-e 'mandoc\.db lacks .* entry') || true
		if [[ -n $out ]]; then
			echo "$out"
			bad=$((bad + 1))
		fi
	done
	((bad == 0)) || fail "$bad page(s) are not lint-clean"
}

@test "man: every page renders with man -l, without warnings" {
	command -v man >/dev/null || skip "man is not installed (Debian: apt-get install man-db)"
	local f out bad=0
	for f in $(pages); do
		out=$(MANWIDTH=80 MAN_KEEP_FORMATTING= man -l "$f" 2>&1 >/dev/null) || {
			echo "man -l $f failed: $out"
			bad=$((bad + 1))
			continue
		}
		if [[ -n $out ]]; then
			echo "man -l $f: $out"
			bad=$((bad + 1))
		fi
	done
	((bad == 0)) || fail "$bad page(s) do not render cleanly"
}

@test "man: each page's .Dt/.TH title and section match its file name" {
	local f base name sect title tsect bad=0
	for f in $(pages); do
		base=${f##*/}
		name=${base%.*}
		sect=${base##*.}
		read -r title tsect _ < <(sed -n 's/^\.\(Dt\|TH\)[ \t]\+//p' "$f" | head -n 1 | tr -d '"')
		if [[ ${title,,} != "${name,,}" || $tsect != "$sect" ]]; then
			echo "$base: title '$title $tsect', expected '${name^^} $sect'"
			bad=$((bad + 1))
		fi
	done
	((bad == 0)) || fail "$bad page(s) have a wrong title line"
}

@test "man: every installed program has a page in man/" {
	local p progs missing=()
	progs=$(installed_programs)
	[[ -n $progs ]] || fail "found no installed program in $top_builddir (built?)"
	for p in $progs; do
		[[ -f $MANDIR/$p.1 ]] || missing+=("$p")
	done
	((${#missing[@]} == 0)) ||
	    fail "no man/NAME.1 for: ${missing[*]} (every program in bin_PROGRAMS needs a page)"
}

@test "man: every installed program's page is installed too (dist_man_MANS)" {
	local mans p missing=()
	mans=$(make_var dist_man_MANS) || skip "cannot ask make for dist_man_MANS"
	for p in $(installed_programs); do
		[[ " $mans " == *" man/$p.1 "* ]] || missing+=("man/$p.1")
	done
	[[ " $mans " == *" man/iomodels.7 "* ]] || missing+=("man/iomodels.7")
	((${#missing[@]} == 0)) ||
	    fail "not in dist_man_MANS, so make install leaves them out: ${missing[*]}"
}

# What --help lists is what the program accepts: each long option must be
# described in the program's page, or, for the options every server shares,
# in iomodels.7.
@test "man: every option in --help is documented" {
	local p bin opts o bad=0 re
	for p in $(installed_programs); do
		bin=
		for d in src asyncio; do
			[[ -x $top_builddir/$d/$p ]] && bin=$top_builddir/$d/$p
		done
		[[ -n $bin && -f $MANDIR/$p.1 ]] || continue
		opts=$("$bin" --help 2>/dev/null |
		    sed -n 's/^[[:space:]]\{1,\}\(-[[:alnum:]],[[:space:]]*\)\{0,1\}--\([[:alnum:]][-[:alnum:]]*\).*/\2/p' |
		    sort -u)
		[[ -n $opts ]] || { echo "$p --help lists no long option"; bad=$((bad + 1)); continue; }
		for o in $opts; do
			# mdoc writes ".Fl -name", man(7) "\-\-name" or "\fB\-\-name".
			re="(Fl -|\\\\-\\\\-|--)$o([^-[:alnum:]]|\$)"
			grep -Eq -- "$re" "$MANDIR/$p.1" && continue
			grep -Eq -- "$re" "$MANDIR/iomodels.7" && continue
			echo "$p: --$o is in --help but in neither man/$p.1 nor man/iomodels.7"
			bad=$((bad + 1))
		done
	done
	((bad == 0)) || fail "$bad option(s) undocumented"
}

# ---- --help and the page agree, both ways ------------------------------------

# The options a program's --help lists, one line per entry, aliases
# together: "-b --backlog", "--highwater", "-h --help --version".
help_entries() { # BIN
	"$1" --help 2>/dev/null | awk '
	/^[ \t]+-/ {
		s = $0
		sub(/^[ \t]+/, "", s)
		line = ""
		while (match(s, /^--?[A-Za-z0-9][-A-Za-z0-9]*/)) {
			line = line (line == "" ? "" : " ") substr(s, 1, RLENGTH)
			s = substr(s, RLENGTH + 1)
			if (s !~ /^, */)
				break
			sub(/^, */, "", s)
		}
		print line
	}'
}

# The options an mdoc page names in section SECT (SYNOPSIS: every line;
# other sections: the .It lines of their lists), as -x and --name:
# ".Fl -name" is --name, ".Fl x" is -x, ".Op Fl q | v" is -q and -v.
page_options() { # PAGE SECT
	awk -v sect="$2" '
	/^\.Sh / { insect = ($0 == ".Sh " sect); next }
	!insect { next }
	sect != "SYNOPSIS" && !/^\.It / { next }
	{
		fl = 0
		for (i = 1; i <= NF; i++) {
			t = $i
			if (i == 1)
				sub(/^\./, "", t)
			if (t == "Fl") { fl = 1; continue }
			if (!fl) continue
			if (t ~ /^\.?[A-Z][a-z]$/) { fl = 0; continue }
			if (t == "|") continue
			sub(/[,;.)]+$/, "", t)
			if (t ~ /^-[a-z][-a-z0-9]*$/)
				print "-" t
			else if (t ~ /^[A-Za-z0-9]+$/)
				for (j = 1; j <= length(t); j++)
					print "-" substr(t, j, 1)
			else
				fl = 0
		}
	}' "$1" | sort -u
}

@test "man: --help and the page's SYNOPSIS and OPTIONS list the same options" {
	local p bin d entries all syn named shared e o found bad=0
	for p in $(installed_programs); do
		bin=
		for d in src asyncio; do
			[[ -x $top_builddir/$d/$p ]] && bin=$top_builddir/$d/$p
		done
		[[ -n $bin && -f $MANDIR/$p.1 ]] || continue
		entries=$(help_entries "$bin")
		[[ -n $entries ]] || { echo "$p: --help lists no option"; bad=$((bad + 1)); continue; }
		all=$(tr ' ' '\n' <<<"$entries" | sort -u)
		syn=$(page_options "$MANDIR/$p.1" SYNOPSIS)
		# Every entry of --help is in the SYNOPSIS, by one of its names...
		while read -r e; do
			found=
			for o in $e; do
				grep -qxF -- "$o" <<<"$syn" && found=1
			done
			[[ -n $found ]] && continue
			echo "$p: '$e' is in --help but not in the SYNOPSIS of $p.1"
			bad=$((bad + 1))
		done <<<"$entries"
		# ...and every option the page names is one --help lists.
		named=$(sort -u <(echo "$syn") <(page_options "$MANDIR/$p.1" OPTIONS))
		for o in $(comm -13 <(echo "$all") <(echo "$named")); do
			echo "$p: $o is in $p.1 but not in --help"
			bad=$((bad + 1))
		done
		# A server takes every shared option iomodels.7 describes (-w
		# only where it has workers: the others refuse it).
		[[ $p == echo-* && $p != echo-bench ]] || continue
		shared=$(page_options "$MANDIR/iomodels.7" "THE SHARED COMMAND LINE")
		grep -qxF -- -w <<<"$all" || shared=$(grep -vx -e -w -e --workers <<<"$shared")
		for o in $(comm -13 <(echo "$all") <(echo "$shared")); do
			echo "$p: $o is in iomodels.7's shared command line but not in --help"
			bad=$((bad + 1))
		done
	done
	((bad == 0)) || fail "$bad disagreement(s) between --help and the pages"
}

# Exit codes: the numbers (0, 1, 64-78) in --help's "Exit status" line
# and in the page's EXIT STATUS section are the same set; the README's
# line on the servers' exit status names the servers' codes.
exit_codes() { # TEXT on stdin
	grep -oE '(^|[^0-9.])(0|1|6[4-9]|7[0-8])([^0-9.]|$)' | tr -cd '0-9\n' | sort -un
}

@test "man: --help, the page and the README agree on exit codes" {
	local p bin d help page bad=0 readme
	for p in $(installed_programs); do
		bin=
		for d in src asyncio; do
			[[ -x $top_builddir/$d/$p ]] && bin=$top_builddir/$d/$p
		done
		[[ -n $bin && -f $MANDIR/$p.1 ]] || continue
		help=$("$bin" --help 2>/dev/null | sed -n 's/^Exit status: //p' | exit_codes)
		[[ -n $help ]] || continue
		page=$(awk '/^\.Sh EXIT STATUS/ { p = 1; next } /^\.Sh/ { p = 0 } p' \
		    "$MANDIR/$p.1" | exit_codes)
		if [[ $help != "$page" ]]; then
			echo "$p: --help says exit" $help "; $p.1 says" $page
			bad=$((bad + 1))
		fi
	done
	readme=$(grep -A6 '^`-p 0` binds' "$top_srcdir/README.md" | tr '\n' ' ' |
	    sed -n 's/.*Exit status: *//p' | sed 's/\.  .*//' | exit_codes)
	page=$(awk '/^\.Sh EXIT STATUS/ { p = 1; next } /^\.Sh/ { p = 0 } p' \
	    "$MANDIR/iomodels.7" | exit_codes)
	if [[ $readme != "$page" ]]; then
		echo "README says the servers exit" $readme "; iomodels.7 says" $page
		bad=$((bad + 1))
	fi
	((bad == 0)) || fail "$bad disagreement(s) on exit codes"
}
