package bench

// tableSet is where a variant's rotations write: a family table (none for the floor) and a token
// table, with the columns the bulk load and the seeding fill and the values they put there.
type tableSet struct {
	schema        string
	family, token string // unqualified; family is "" when the set has none
	familyColumns []string
	familyValues  func(r *familyRow) []any
	tokenColumns  []string
	tokenValues   func(r *familyRow) []any
}

// tables returns the set's tables, schema-qualified.
func (s tableSet) tables() []string {
	var out []string
	if s.family != "" {
		out = append(out, s.schema+"."+s.family)
	}
	return append(out, s.schema+"."+s.token)
}

func (s tableSet) String() string {
	if s.family == "" {
		return s.schema + "." + s.token
	}
	return s.schema + ".{" + s.family + ", " + s.token + "}"
}

// tablesOf returns the tables variant v rotates in.
func tablesOf(v string) tableSet {
	switch v {
	case VariantFloor:
		return floorTables
	case VariantPrevious:
		return previousTables
	}
	return packageTables
}

// tableSetsOf returns the table sets the variants rotate in, each once, in the order of variants.
func tableSetsOf(variants []string) []tableSet {
	var out []tableSet
	seen := map[string]bool{}
	for _, v := range variants {
		s := tablesOf(v)
		if !seen[s.String()] {
			seen[s.String()] = true
			out = append(out, s)
		}
	}
	return out
}
