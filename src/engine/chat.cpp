/* chat.cpp - the C facade over llama.cpp's `common` chat layer (chat.h).
 *
 * Why C++ here: the Jinja engine, the per-model tool-call formats, the
 * output parsers and the JSON-Schema-to-GBNF converter all live in
 * llama.cpp's `common` library, whose interface is C++ (std::string,
 * std::vector, exceptions). This one translation unit calls it and hands C
 * structs back, so the rest of the project stays C11 and sees no C++ type,
 * and no exception crosses into C: every entry point catches them all.
 *
 * Threads: an ic_chat is immutable after ic_chat_create, so any thread may
 * render and parse with it concurrently. Owns: the common_chat_templates;
 * each ic_chat_prompt owns its strings and its loaded parser.
 */
#include "chat.h"
extern "C" {
#include "err.h"
}

#include <chat.h>
#include <common.h>
#include <json-schema-to-grammar.h>
#include <log.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <regex>
#include <string>
#include <vector>

struct ic_chat {
    common_chat_templates_ptr tmpls;
    bool supports_thinking;
    bool supports_tools;
    bool supports_parallel_tool_calls;
};

/* The output parser of one rendered prompt: format, generation prompt and
 * the PEG arena, loaded once from common_chat_params.parser. */
struct ic_chat_syntax {
    common_chat_parser_params params;
};

static void set_err(char *err, size_t size, const char *fmt, ...)
{
    if (!err || size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

static char *dup_str(const std::string &s)
{
    char *p = static_cast<char *>(malloc(s.size() + 1));
    if (!p)
        throw std::bad_alloc();
    memcpy(p, s.data(), s.size());
    p[s.size()] = '\0';
    return p;
}

/* A malloc'd array of malloc'd copies of v (NULL when v is empty). */
static char **dup_strs(const std::vector<std::string> &v, size_t *n)
{
    *n = 0;
    if (v.empty())
        return nullptr;
    char **out = static_cast<char **>(calloc(v.size(), sizeof *out));
    if (!out)
        throw std::bad_alloc();
    for (const auto &s : v) {
        try {
            out[*n] = dup_str(s);
        } catch (...) {
            for (size_t i = 0; i < *n; i++)
                free(out[i]);
            free(out);
            *n = 0;
            throw;
        }
        (*n)++;
    }
    return out;
}

static void free_strs(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* common logs through its own worker thread on stderr; the server keeps
 * its stderr for ic_log, so common is told to stay silent. Its errors all
 * reach us as exceptions, which carry the same text. */
static void quiet_common_log()
{
    static std::once_flag once;
    std::call_once(once, [] { common_log_set_verbosity_thold(-1); });
}

extern "C" ic_chat_render_opts ic_chat_render_opts_default(void)
{
    ic_chat_render_opts o;
    memset(&o, 0, sizeof o);
    o.parallel_tool_calls = -1;
    o.add_generation_prompt = true;
    o.reasoning = -1;
    return o;
}

extern "C" int ic_chat_create(const ic_engine *e, const char *template_override, ic_chat **out,
                              char *err, size_t err_size)
{
    *out = nullptr;
    quiet_common_log();
    ic_chat *c = new (std::nothrow) ic_chat();
    if (!c) {
        set_err(err, err_size, "out of memory");
        return IC_ERR_NOMEM;
    }
    try {
        c->tmpls = common_chat_templates_init(ic_engine_llama_model(e),
                                              template_override ? template_override : "");
        c->supports_thinking = common_chat_templates_support_enable_thinking(c->tmpls.get());
        auto caps = common_chat_templates_get_caps(c->tmpls.get());
        c->supports_tools = caps["supports_tools"];
        c->supports_parallel_tool_calls = caps["supports_parallel_tool_calls"];
    } catch (const std::bad_alloc &) {
        delete c;
        set_err(err, err_size, "out of memory");
        return IC_ERR_NOMEM;
    } catch (const std::exception &ex) {
        delete c;
        set_err(err, err_size, "chat template: %s", ex.what());
        return IC_ERR_TEMPLATE;
    }
    *out = c;
    return 0;
}

extern "C" void ic_chat_destroy(ic_chat *c) { delete c; }

extern "C" bool ic_chat_supports_reasoning(const ic_chat *c) { return c->supports_thinking; }

extern "C" bool ic_chat_supports_tools(const ic_chat *c) { return c->supports_tools; }

/* A "pattern" the converter cannot express: it would warn on stderr and
 * accept any string there (an unconstrained field), so it is refused
 * here. The converter supports only patterns anchored with ^ and $. */
static bool unsupported_pattern(const common_json &schema, std::string *why)
{
    if (schema.is_array()) {
        for (const auto &v : schema)
            if (unsupported_pattern(v, why))
                return true;
        return false;
    }
    if (!schema.is_object())
        return false;
    for (auto it = schema.begin(); it != schema.end(); ++it) {
        if (it.key() == "pattern" && it.value().is_string()) {
            std::string p = it.value().get<std::string>();
            if (p.empty() || p.front() != '^' || p.back() != '$') {
                *why = "pattern " + p + " is not supported (not anchored with '^' and '$')";
                return true;
            }
        } else if (unsupported_pattern(it.value(), why)) {
            return true;
        }
    }
    return false;
}

/* The GBNF of a schema, or an exception with the reason it is refused. */
static std::string schema_grammar(const common_json &schema)
{
    std::string why;
    if (unsupported_pattern(schema, &why))
        throw std::invalid_argument(why);
    return json_schema_to_grammar(schema);
}

/* Bad input found before common sees it: an IC_ERR_INVAL, not a template error. */
struct bad_input : std::runtime_error {
    using std::runtime_error::runtime_error;
};

static bool role_known(const char *role)
{
    static const char *const roles[] = { "system", "developer", "user", "assistant", "tool" };
    for (const char *r : roles)
        if (strcmp(role, r) == 0)
            return true;
    return false;
}

static std::vector<common_chat_msg> convert_messages(const ic_chat_message *msgs, size_t n)
{
    std::vector<common_chat_msg> out;
    out.reserve(n);
    for (size_t i = 0; i < n; i++) {
        const ic_chat_message &m = msgs[i];
        if (!m.role || !role_known(m.role))
            throw bad_input("message " + std::to_string(i) + ": unknown role '" +
                            (m.role ? m.role : "(none)") + "'");
        if (!m.content && m.n_tool_calls == 0)
            throw bad_input("message " + std::to_string(i) + ": no content and no tool calls");
        common_chat_msg cm;
        cm.role = m.role;
        if (m.content)
            cm.content = m.content;
        if (m.reasoning_content)
            cm.reasoning_content = m.reasoning_content;
        if (m.tool_call_id)
            cm.tool_call_id = m.tool_call_id;
        if (m.tool_name)
            cm.tool_name = m.tool_name;
        for (size_t k = 0; k < m.n_tool_calls; k++) {
            const ic_chat_tool_call &tc = m.tool_calls[k];
            if (!tc.name || !tc.arguments)
                throw bad_input("message " + std::to_string(i) + ": tool call without name or arguments");
            common_chat_tool_call ct;
            ct.name = tc.name;
            ct.arguments = tc.arguments;
            if (tc.id)
                ct.id = tc.id;
            cm.tool_calls.push_back(std::move(ct));
        }
        out.push_back(std::move(cm));
    }
    return out;
}

/* Fills the inputs the way llama-server's oaicompat_chat_params_parse does
 * with its default options (--jinja, reasoning format deepseek, reasoning
 * preserved, a trailing assistant message continued). */
static common_chat_templates_inputs make_inputs(const ic_chat *c, const ic_chat_message *msgs, size_t n,
                                                const ic_chat_render_opts &o)
{
    common_chat_templates_inputs in;
    in.messages = convert_messages(msgs, n);
    in.use_jinja = true;
    if (o.tools_json && *o.tools_json) {
        common_json tools;
        try {
            tools = common_json::parse(o.tools_json);
            in.tools = common_chat_tools_parse_oaicompat(tools);
        } catch (const std::exception &ex) {
            throw bad_input(std::string("tools: ") + ex.what());
        }
    }
    try {
        in.tool_choice = common_chat_tool_choice_parse_oaicompat(o.tool_choice ? o.tool_choice : "auto");
    } catch (const std::exception &ex) {
        throw bad_input(ex.what());
    }
    in.parallel_tool_calls = o.parallel_tool_calls < 0 ? c->supports_parallel_tool_calls
                                                       : o.parallel_tool_calls != 0;
    bool has_schema = o.json_schema && *o.json_schema, has_grammar = o.grammar && *o.grammar;
    if (has_schema && has_grammar)
        throw bad_input("json_schema and grammar cannot both be given");
    if (has_grammar && !in.tools.empty() && in.tool_choice != COMMON_CHAT_TOOL_CHOICE_NONE)
        throw bad_input("a grammar cannot be combined with tools");
    if (has_schema) {
        common_json schema;
        try {
            schema = common_json::parse(o.json_schema);
        } catch (const std::exception &ex) {
            throw bad_input(std::string("json_schema is not JSON: ") + ex.what());
        }
        try {
            schema_grammar(schema); /* refuse it here, with its reason */
        } catch (const std::exception &ex) {
            throw bad_input(std::string("json_schema does not compile: ") + ex.what());
        }
        in.json_schema = schema.dump();
    }
    if (has_grammar)
        in.grammar = o.grammar;
    in.add_generation_prompt = o.add_generation_prompt;
    if (!in.messages.empty() && in.messages.back().role == "assistant" &&
        in.messages.back().tool_calls.empty() && o.add_generation_prompt) {
        if (in.messages.size() >= 2 && in.messages[in.messages.size() - 2].role == "assistant")
            throw bad_input("two or more assistant messages at the end of the conversation");
        in.continue_final_message = COMMON_CHAT_CONTINUATION_AUTO;
        in.add_generation_prompt = false;
    }
    in.reasoning_format = COMMON_REASONING_FORMAT_DEEPSEEK;
    in.enable_thinking = c->supports_thinking && o.reasoning != 0;
    in.chat_template_kwargs["preserve_reasoning"] = "true";
    return in;
}

static void prompt_free_fields(ic_chat_prompt *p)
{
    free(p->prompt);
    free(p->generation_prompt);
    free(p->grammar);
    for (size_t i = 0; i < p->n_triggers; i++) {
        free(const_cast<char *>(p->triggers[i].word));
        free(const_cast<char *>(p->triggers[i].pattern));
    }
    free(p->triggers);
    free_strs(p->preserved_tokens, p->n_preserved_tokens);
    free_strs(p->additional_stops, p->n_additional_stops);
    free(p->thinking_start_tag);
    free_strs(p->thinking_end_tags, p->n_thinking_end_tags);
    delete p->syntax;
}

extern "C" void ic_chat_prompt_free(ic_chat_prompt *p)
{
    if (!p)
        return;
    prompt_free_fields(p);
    free(p);
}

/* common's triggers as the engine takes them: a pattern always (what
 * common_sampler_init builds from each kind), the literal word where there
 * is one, so the engine can trigger on its token. */
static void convert_triggers(const std::vector<common_grammar_trigger> &ts, ic_chat_prompt *p)
{
    if (ts.empty())
        return;
    p->triggers = static_cast<ic_grammar_trigger *>(calloc(ts.size(), sizeof *p->triggers));
    if (!p->triggers)
        throw std::bad_alloc();
    for (const auto &t : ts) {
        std::string pattern;
        bool literal = false;
        switch (t.type) {
        case COMMON_GRAMMAR_TRIGGER_TYPE_WORD:
        case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN:
            pattern = regex_escape(t.value);
            literal = true;
            break;
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN:
            pattern = t.value;
            break;
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL:
            pattern = "^$";
            if (!t.value.empty())
                pattern = (t.value.front() != '^' ? "^" : "") + t.value + (t.value.back() != '$' ? "$" : "");
            break;
        }
        /* llama.cpp compiles it with std::regex and would throw through its
         * C API; refuse a bad one here, where exceptions are caught. */
        std::regex check(pattern);
        (void)check;
        ic_grammar_trigger &out = p->triggers[p->n_triggers++];
        out.pattern = dup_str(pattern);
        out.word = literal ? dup_str(t.value) : nullptr;
    }
}

static void fill_prompt(const common_chat_params &cp, bool thinking, ic_chat_prompt *p)
{
    p->prompt = dup_str(cp.prompt);
    p->format = cp.format;
    p->format_name = common_chat_format_name(cp.format);
    p->generation_prompt = dup_str(cp.generation_prompt);
    if (!cp.grammar.empty())
        p->grammar = dup_str(cp.grammar);
    p->grammar_lazy = cp.grammar_lazy;
    convert_triggers(cp.grammar_triggers, p);
    p->preserved_tokens = dup_strs(cp.preserved_tokens, &p->n_preserved_tokens);
    p->additional_stops = dup_strs(cp.additional_stops, &p->n_additional_stops);
    p->thinking = thinking;
    p->thinking_start_tag = dup_str(cp.thinking_start_tag);
    p->thinking_end_tags = dup_strs(cp.thinking_end_tags, &p->n_thinking_end_tags);
    p->syntax = new ic_chat_syntax();
    p->syntax->params = common_chat_parser_params(cp);
    p->syntax->params.reasoning_format = COMMON_REASONING_FORMAT_DEEPSEEK;
    if (!cp.parser.empty())
        p->syntax->params.parser.load(cp.parser);
}

extern "C" int ic_chat_render(const ic_chat *c, const ic_chat_message *msgs, size_t n,
                              const ic_chat_render_opts *opts, ic_chat_prompt **out, char *err,
                              size_t err_size)
{
    *out = nullptr;
    ic_chat_render_opts defaults = ic_chat_render_opts_default();
    const ic_chat_render_opts &o = opts ? *opts : defaults;
    ic_chat_prompt *p = static_cast<ic_chat_prompt *>(calloc(1, sizeof *p));
    if (!p) {
        set_err(err, err_size, "out of memory");
        return IC_ERR_NOMEM;
    }
    int rc = 0;
    try {
        common_chat_templates_inputs in = make_inputs(c, msgs, n, o);
        common_chat_params cp = common_chat_templates_apply(c->tmpls.get(), in);
        fill_prompt(cp, in.enable_thinking, p);
    } catch (const std::bad_alloc &) {
        set_err(err, err_size, "out of memory");
        rc = IC_ERR_NOMEM;
    } catch (const bad_input &ex) {
        set_err(err, err_size, "%s", ex.what());
        rc = IC_ERR_INVAL;
    } catch (const std::exception &ex) {
        set_err(err, err_size, "chat template: %s", ex.what());
        rc = IC_ERR_TEMPLATE;
    }
    if (rc != 0) {
        ic_chat_prompt_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

extern "C" ic_grammar ic_chat_prompt_grammar(const ic_chat_prompt *p)
{
    ic_grammar g;
    memset(&g, 0, sizeof g);
    g.gbnf = p->grammar;
    g.lazy = p->grammar_lazy;
    g.triggers = p->triggers;
    g.n_triggers = p->n_triggers;
    /* llama-server feeds the generation prompt to a strict template
     * grammar (it starts with it), never to a lazy one. */
    g.prefill = p->grammar && !p->grammar_lazy ? p->generation_prompt : nullptr;
    return g;
}

extern "C" void ic_chat_parsed_free(ic_chat_parsed *r)
{
    if (!r)
        return;
    free(r->content);
    free(r->reasoning_content);
    for (size_t i = 0; i < r->n_tool_calls; i++) {
        free(const_cast<char *>(r->tool_calls[i].id));
        free(const_cast<char *>(r->tool_calls[i].name));
        free(const_cast<char *>(r->tool_calls[i].arguments));
    }
    free(r->tool_calls);
    free(r);
}

static void fill_parsed(const common_chat_msg &m, ic_chat_parsed *r)
{
    r->content = dup_str(m.content);
    r->reasoning_content = dup_str(m.reasoning_content);
    if (m.tool_calls.empty())
        return;
    r->tool_calls = static_cast<ic_chat_tool_call *>(calloc(m.tool_calls.size(), sizeof *r->tool_calls));
    if (!r->tool_calls)
        throw std::bad_alloc();
    for (const auto &tc : m.tool_calls) {
        ic_chat_tool_call &out = r->tool_calls[r->n_tool_calls++];
        out.id = dup_str(tc.id);
        out.name = dup_str(tc.name);
        out.arguments = dup_str(tc.arguments);
    }
}

extern "C" int ic_chat_parse(const ic_chat_prompt *p, const char *text, size_t len, bool partial,
                             ic_chat_parsed **out, char *err, size_t err_size)
{
    *out = nullptr;
    ic_chat_parsed *r = static_cast<ic_chat_parsed *>(calloc(1, sizeof *r));
    if (!r) {
        set_err(err, err_size, "out of memory");
        return IC_ERR_NOMEM;
    }
    int rc = 0;
    try {
        common_chat_msg m = common_chat_parse(std::string(text, len), partial, p->syntax->params);
        fill_parsed(m, r);
    } catch (const std::bad_alloc &) {
        set_err(err, err_size, "out of memory");
        rc = IC_ERR_NOMEM;
    } catch (const std::exception &ex) {
        set_err(err, err_size, "%s", ex.what());
        rc = IC_ERR_PARSE;
    }
    if (rc != 0) {
        ic_chat_parsed_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

extern "C" int ic_chat_schema_to_grammar(const char *schema_json, char **gbnf, char *err, size_t err_size)
{
    *gbnf = nullptr;
    quiet_common_log();
    try {
        common_json schema;
        try {
            schema = common_json::parse(schema_json ? schema_json : "");
        } catch (const std::exception &ex) {
            set_err(err, err_size, "json_schema is not JSON: %s", ex.what());
            return IC_ERR_INVAL;
        }
        *gbnf = dup_str(schema_grammar(schema));
    } catch (const std::bad_alloc &) {
        set_err(err, err_size, "out of memory");
        return IC_ERR_NOMEM;
    } catch (const std::exception &ex) {
        set_err(err, err_size, "json_schema does not compile: %s", ex.what());
        return IC_ERR_INVAL;
    }
    return 0;
}
